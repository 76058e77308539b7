// The news-brief example as code: the same definition as functions/examples/news-brief.json
// (a test keeps the two deep-equal). Deploy with `npx genrt-deploy examples`.
import { defineFunction } from '@genrt/sdk';

export default defineFunction<{ topic: string; audience?: string }>({
  name: 'news-brief',
  model: 'smollm2-135m',
  system:
    'You are a news desk editor. House style: a short factual title; a one-sentence lede that answers who, what and where; a body of at most three short sentences in plain language; no opinions, no exclamation marks, no first person; two or three lowercase topic tags. Answer with JSON only.',
  prompt: 'Write a news brief about: {{ topic }}.{% if audience %} The readers are {{ audience }}.{% endif %}',
  input_schema: {
    type: 'object',
    properties: {
      topic: { type: 'string', minLength: 3, maxLength: 500 },
      audience: { type: 'string' },
    },
    required: ['topic'],
  },
  output: {
    format: 'json',
    json_schema: {
      type: 'object',
      properties: {
        title: { type: 'string', maxLength: 60 },
        lede: { type: 'string', maxLength: 160 },
        body: { type: 'string', maxLength: 320 },
        tags: {
          type: 'array',
          items: { type: 'string', maxLength: 20 },
          minItems: 2,
          maxItems: 3,
        },
      },
      required: ['title', 'lede', 'body', 'tags'],
      additionalProperties: false,
    },
  },
  params: { max_tokens: 320, temperature: 0 },
  cache: { ttl_s: 900 },
  timeout_s: 60,
});
