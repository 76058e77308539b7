// The OpenAI-compatible API (/openai/v1) with the official `openai` npm package as the client,
// against a real genrt (SQLite, the real SmolLM2 model): what an existing OpenAI application
// gets by changing its base URL.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { Genrt } from '@genrt/sdk';
import { MODEL_ID, startServer } from './server.mjs';

let server;
let openai;
let token;

/** A function whose templates and JSON constraint apply when it is named as the model. */
const HEADLINE = {
  name: 'headline',
  model: MODEL_ID,
  system: 'You write newspaper headlines.',
  prompt: 'Write a headline about: {{ topic }}',
  input_schema: { type: 'object', properties: { topic: { type: 'string', minLength: 3 } }, required: ['topic'] },
  output: {
    format: 'json',
    json_schema: {
      type: 'object',
      properties: { headline: { type: 'string', maxLength: 60 } },
      required: ['headline'],
      additionalProperties: false,
    },
  },
  params: { max_tokens: 80, temperature: 0 },
};

before(async () => {
  server = await startServer();
  token = await server.token('acme');
  openai = new OpenAI({ baseURL: `${server.baseURL}/openai/v1`, apiKey: token, maxRetries: 0 });
  await new Genrt({ baseURL: server.baseURL, token }).functions.deploy(HEADLINE);
});

after(async () => {
  await server?.stop();
});

test('models lists the registered models and the tenant’s functions', async () => {
  const ids = [];
  for await (const model of openai.models.list()) ids.push(model.id);
  assert.ok(ids.includes(MODEL_ID), ids.join(','));
  assert.ok(ids.includes('headline'), ids.join(','));
});

test('a chat completion from a model, with usage and a stop reason', async () => {
  const completion = await openai.chat.completions.create({
    model: MODEL_ID,
    messages: [
      { role: 'system', content: 'You are a helpful assistant.' },
      { role: 'user', content: 'What is the capital of France?' },
    ],
    max_tokens: 16,
    temperature: 0,
  });
  assert.equal(completion.object, 'chat.completion');
  assert.equal(completion.model, MODEL_ID);
  assert.equal(completion.choices.length, 1);
  const [choice] = completion.choices;
  assert.equal(choice.message.role, 'assistant');
  assert.ok(choice.message.content.length > 0);
  assert.match(choice.message.content, /Paris/);
  assert.ok(['stop', 'length'].includes(choice.finish_reason));
  assert.ok(completion.usage.prompt_tokens > 10);
  assert.ok(completion.usage.completion_tokens > 0 && completion.usage.completion_tokens <= 16);
  assert.equal(completion.usage.total_tokens, completion.usage.prompt_tokens + completion.usage.completion_tokens);
});

test('max_completion_tokens caps the answer and n returns several choices', async () => {
  const completion = await openai.chat.completions.create({
    model: MODEL_ID,
    messages: [{ role: 'user', content: 'Tell me a long story about a dragon.' }],
    max_completion_tokens: 5,
    n: 2,
    seed: 11,
  });
  assert.equal(completion.choices.length, 2);
  assert.deepEqual(completion.choices.map((c) => c.index), [0, 1]);
  for (const choice of completion.choices) assert.equal(choice.finish_reason, 'length');
  assert.equal(completion.usage.completion_tokens, 10);
});

test('streaming yields chunks in OpenAI’s format, then the usage, then ends', async () => {
  const stream = await openai.chat.completions.create({
    model: MODEL_ID,
    messages: [{ role: 'user', content: 'Count from one to five.' }],
    max_tokens: 12,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let roles = 0;
  let finish = null;
  let usage = null;
  let chunks = 0;
  let ids = new Set();
  for await (const chunk of stream) {
    chunks += 1;
    ids.add(chunk.id);
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta.role) roles += 1;
      text += choice.delta.content ?? '';
      finish = choice.finish_reason ?? finish;
    }
  }
  assert.ok(chunks >= 3, `only ${chunks} chunks`);
  assert.equal(ids.size, 1, 'every chunk carries the same id');
  assert.equal(roles, 1, 'the role comes once, in the first chunk');
  assert.ok(text.length > 0);
  assert.equal(finish, 'length');
  assert.equal(usage?.completion_tokens, 12);

  // The same request without streaming produces the same text (temperature 0).
  const whole = await openai.chat.completions.create({
    model: MODEL_ID,
    messages: [{ role: 'user', content: 'Count from one to five.' }],
    max_tokens: 12,
    temperature: 0,
  });
  assert.equal(whole.choices[0].message.content, text);
});

test('a JSON-schema response format constrains the output', async () => {
  const schema = {
    type: 'object',
    properties: {
      city: { type: 'string', maxLength: 30 },
      country: { type: 'string', maxLength: 30 },
    },
    required: ['city', 'country'],
    additionalProperties: false,
  };
  const completion = await openai.chat.completions.create({
    model: MODEL_ID,
    messages: [{ role: 'user', content: 'Name a famous city and its country.' }],
    max_tokens: 60,
    temperature: 0,
    response_format: { type: 'json_schema', json_schema: { name: 'place', schema, strict: true } },
  });
  const value = JSON.parse(completion.choices[0].message.content);
  assert.deepEqual(Object.keys(value).sort(), ['city', 'country']);
  assert.equal(typeof value.city, 'string');
  assert.equal(typeof value.country, 'string');

  const object = await openai.chat.completions.create({
    model: MODEL_ID,
    messages: [{ role: 'user', content: 'Return a JSON object with a name and an age for a fictional person.' }],
    max_tokens: 100,
    temperature: 0,
    response_format: { type: 'json_object' },
  });
  assert.equal(object.choices[0].finish_reason, 'stop');
  const parsed = JSON.parse(object.choices[0].message.content);
  assert.ok(parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed));

  // Cut short by max_tokens, JSON comes back as it is with finish_reason `length`, as
  // OpenAI's API does, rather than as an error.
  const cut = await openai.chat.completions.create({
    model: MODEL_ID,
    messages: [{ role: 'user', content: 'Describe a cat in great detail as JSON.' }],
    max_tokens: 8,
    temperature: 0,
    response_format: { type: 'json_object' },
  });
  assert.equal(cut.choices[0].finish_reason, 'length');
  assert.match(cut.choices[0].message.content, /^\s*\{/);
  assert.throws(() => JSON.parse(cut.choices[0].message.content));
});

test('a function named as the model applies its templates and output constraint', async () => {
  const completion = await openai.chat.completions.create({
    model: 'headline',
    messages: [{ role: 'user', content: 'a new bridge opens in the city' }],
  });
  const value = JSON.parse(completion.choices[0].message.content);
  assert.deepEqual(Object.keys(value), ['headline']);
  assert.ok(value.headline.length <= 60);
  // The function's own system prompt and template count in the prompt.
  assert.ok(completion.usage.prompt_tokens > 20);

  // Its input schema applies: a JSON object that breaks it is refused.
  await assert.rejects(
    openai.chat.completions.create({ model: 'headline', messages: [{ role: 'user', content: '{"topic": "x"}' }] }),
    (err) => err instanceof OpenAI.BadRequestError && err.code === 'invalid_input',
  );
});

test('text completion takes the prompt as it is', async () => {
  const completion = await openai.completions.create({
    model: MODEL_ID,
    prompt: 'The capital of France is',
    max_tokens: 4,
    temperature: 0,
  });
  assert.equal(completion.object, 'text_completion');
  assert.match(completion.choices[0].text, /Paris/);
  // No chat template around it: the prompt alone is a handful of tokens.
  assert.ok(completion.usage.prompt_tokens < 10, `${completion.usage.prompt_tokens} prompt tokens`);

  const stream = await openai.completions.create({
    model: MODEL_ID,
    prompt: 'The capital of France is',
    max_tokens: 4,
    temperature: 0,
    stream: true,
  });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
  assert.equal(text, completion.choices[0].text);
});

test('errors come in OpenAI’s shape and map to the client’s classes', async () => {
  await assert.rejects(
    openai.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }),
    (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, String(err));
      assert.equal(err.status, 404);
      assert.equal(err.code, 'model_not_found');
      assert.equal(err.param, 'model');
      assert.equal(err.type, 'not_found_error');
      assert.match(err.message, /no-such-model/);
      return true;
    },
  );
  const stranger = new OpenAI({ baseURL: `${server.baseURL}/openai/v1`, apiKey: 'not-a-token', maxRetries: 0 });
  await assert.rejects(
    stranger.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: 'hi' }] }),
    (err) => err instanceof OpenAI.AuthenticationError && err.status === 401,
  );
  await assert.rejects(
    openai.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: 'hi' }], n: 2, stream: true }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'n',
  );
  await assert.rejects(
    openai.chat.completions.create({
      model: MODEL_ID,
      messages: [{ role: 'user', content: 'hi' }],
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'tools',
  );
  // The test server's second model is not configured for embeddings.
  await assert.rejects(
    openai.embeddings.create({ model: 'smollm2-135m-fashion', input: 'hello' }),
    (err) => err instanceof OpenAI.BadRequestError && err.code === 'embeddings_not_supported',
  );
});

test('embeddings: unit vectors, closer for closer meanings, in both encodings', async () => {
  const input = ['The cat sat on the mat.', 'A kitten rested on the rug.', 'Quarterly revenue rose by five percent.'];
  // The official client asks for base64 by default and decodes it.
  const response = await openai.embeddings.create({ model: MODEL_ID, input });
  assert.equal(response.object, 'list');
  assert.equal(response.data.length, 3);
  assert.deepEqual(response.data.map((d) => d.index), [0, 1, 2]);
  const vectors = response.data.map((d) => d.embedding);
  const dot = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0);
  for (const v of vectors) {
    assert.ok(v.length >= 64, `${v.length} dimensions`);
    assert.ok(Math.abs(dot(v, v) - 1) < 1e-3, 'unit length');
  }
  assert.ok(dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2]), 'cat is closer to kitten than to revenue');
  assert.ok(response.usage.prompt_tokens >= 15);

  // Floats, as asked, equal the base64 ones; embedding is deterministic.
  const floats = await openai.embeddings.create({ model: MODEL_ID, input: input[0], encoding_format: 'float' });
  assert.equal(floats.data.length, 1);
  floats.data[0].embedding.forEach((x, i) => assert.ok(Math.abs(x - vectors[0][i]) < 1e-5));

  await assert.rejects(
    openai.embeddings.create({ model: MODEL_ID, input: ['fine', ''] }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'input[1]',
  );
  await assert.rejects(
    openai.embeddings.create({ model: MODEL_ID, input: 'x', dimensions: 3 }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'dimensions',
  );
});
