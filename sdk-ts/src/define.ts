// Functions as code: a definition written in TypeScript, checked against the runtime's own
// FunctionDefinition schema, deployed by `genrt-deploy`.
import type { FunctionDefinition } from './types.js';

/** The input type a defined function accepts; it flows into `invoke`, `stream` and friends. */
declare const inputType: unique symbol;

/**
 * A function definition that remembers its input type. The brand exists only for the type
 * checker: at run time this is the plain definition object, exactly what is POSTed.
 */
export type GenrtFunction<Input = Record<string, unknown>> = FunctionDefinition & {
  readonly [inputType]?: Input;
};

/** The input type of a defined function (or a plain record for a function named by string). */
export type InputOf<F> = F extends GenrtFunction<infer I> ? I : Record<string, unknown>;

/**
 * Declares a function. The object is returned unchanged (deploying it sends exactly this);
 * the optional type parameter names the input shape so that invocations are checked:
 *
 * ```ts
 * export default defineFunction<{ topic: string; audience?: string }>({ name: 'news-brief', ... });
 * await genrt.invoke(newsBrief, { topic: 'tides' });   // `topic` is required here
 * ```
 */
export function defineFunction<Input = Record<string, unknown>>(definition: FunctionDefinition): GenrtFunction<Input> {
  return definition as GenrtFunction<Input>;
}
