// Compile-time checks, run by `tsc --noEmit` (scripts/test.sh): input types flow from
// defineFunction into invoke, and definitions are checked against the generated schema.
import { defineFunction, Genrt, type ErrorCode, type StreamEvent } from '@genrt/sdk';
import newsBrief from '../examples/news-brief.js';

const genrt = new Genrt();

export async function checks(): Promise<void> {
  await genrt.invoke(newsBrief, { topic: 'tides', audience: 'sailors' });
  // @ts-expect-error `topic` is required by the function's input type.
  await genrt.invoke(newsBrief, { audience: 'sailors' });
  // @ts-expect-error `topic` is a string.
  await genrt.stream(newsBrief, { topic: 42 });
  // A function named by string takes any object.
  await genrt.invoke('news-brief', { anything: true });

  for await (const event of genrt.stream(newsBrief, { topic: 'tides' })) {
    const e: StreamEvent = event;
    if (e.type === 'token') e.text.toUpperCase();
    else e.usage.completion_tokens.toFixed();
  }

  const code: ErrorCode = 'rate_limited';
  // @ts-expect-error not one of the server's codes.
  const wrong: ErrorCode = 'no_such_code';
  void code;
  void wrong;

  // @ts-expect-error `prompt` is required by FunctionDefinition.
  defineFunction({ name: 'x', model: 'm' });
  // @ts-expect-error unknown fields are refused, as the server does.
  defineFunction({ name: 'x', model: 'm', prompt: 'p', temprature: 0 });
}
