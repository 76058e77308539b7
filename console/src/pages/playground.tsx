import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, client, streamInvoke, unwrap, type Schemas, type StreamDone } from '../api';
import type { Session } from '../main';
import { ErrorBox, Json, Loading, Section, UsageFacts, href, navigate, useResource } from '../ui';

type JsonSchema = {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  enum?: unknown[];
  description?: string;
  items?: JsonSchema;
  maxLength?: number;
  default?: unknown;
};

/** The function picker, then the playground of the chosen function. */
export function Playground({ session, name, version }: { session: Session; name?: string; version?: string }) {
  const functions = useResource(() => unwrap(client.GET('/v1/functions')), 'playground-functions');
  return (
    <>
      <Section title="Playground">
        <ErrorBox error={functions.error} />
        <label>
          Function{' '}
          <select
            value={name ?? ''}
            onChange={(e) => navigate(href(['playground', (e.target as HTMLSelectElement).value]))}
          >
            <option value="">Choose a function…</option>
            {functions.data?.functions.map((f) => (
              <option key={f.name} value={f.name}>
                {f.name}
              </option>
            ))}
          </select>
        </label>
      </Section>
      {name ? <Runner key={name} session={session} name={name} initialVersion={version} /> : null}
    </>
  );
}

function Runner({ session, name, initialVersion }: { session: Session; name: string; initialVersion?: string }) {
  const versions = useResource(
    () => unwrap(client.GET('/v1/functions/{name}/versions', { params: { path: { name } } })),
    `playground-versions:${name}`,
  );
  const [choice, setChoice] = useState(initialVersion ?? '');
  const list = versions.data?.versions ?? [];
  const aliases = [...new Set(list.flatMap((v) => v.aliases))].sort();
  // What the choice runs, as the server resolves it: a bare name runs the `default` alias
  // when there is one, else the latest version. (A split alias runs one of several versions;
  // the form follows the first listed that it names.)
  const aliased = (alias: string) => list.find((v) => v.aliases.includes(alias));
  const chosen =
    (choice === ''
      ? aliased('default')
      : choice.startsWith('@')
        ? aliased(choice.slice(1))
        : list.find((v) => String(v.version) === choice)) ?? list[list.length - 1];
  const schema = (chosen?.definition.input_schema ?? { type: 'object', properties: {} }) as JsonSchema;
  const defaults = chosen?.definition.params ?? {};

  const [input, setInput] = useState<Record<string, string>>({});
  const [params, setParams] = useState<Record<string, string>>({});
  const [text, setText] = useState('');
  const [updates, setUpdates] = useState(0);
  const [done, setDone] = useState<StreamDone | undefined>();
  const [error, setError] = useState<ApiError | undefined>();
  const [running, setRunning] = useState(false);
  const [stopped, setStopped] = useState(false);
  const controller = useRef<AbortController | undefined>();

  useEffect(() => () => controller.current?.abort(), []);

  async function run(e: Event) {
    e.preventDefault();
    let body: Schemas['InvokeRequest'];
    try {
      body = { input: buildInput(schema, input), params: buildParams(params) };
    } catch (err) {
      setError(err as ApiError);
      return;
    }
    const reference = choice === '' ? name : choice.startsWith('@') ? `${name}${choice}` : `${name}@${choice}`;
    controller.current?.abort();
    const abort = new AbortController();
    controller.current = abort;
    setText('');
    setUpdates(0);
    setDone(undefined);
    setError(undefined);
    setStopped(false);
    setRunning(true);
    try {
      const final = await streamInvoke(reference, body, abort.signal, (token) => {
        setText((t) => t + token);
        setUpdates((n) => n + 1);
      });
      setDone(final);
    } catch (err) {
      if (abort.signal.aborted) setStopped(true);
      else setError(err instanceof ApiError ? err : new ApiError(0, 'unreachable', 'genrt did not answer.'));
    } finally {
      if (controller.current === abort) controller.current = undefined;
      setRunning(false);
    }
  }

  function stop() {
    controller.current?.abort();
  }

  const properties = Object.entries(schema.properties ?? {});
  return (
    <>
      <Section title={`Run ${name}`}>
        {versions.loading && !versions.data ? <Loading what="versions" /> : null}
        <ErrorBox error={versions.error} />
        <form onSubmit={run} class="playground" aria-label={`Run ${name}`}>
          <fieldset>
            <legend>Version</legend>
            <select aria-label="Version" value={choice} onChange={(e) => setChoice((e.target as HTMLSelectElement).value)}>
              <option value="">Default (what callers of “{name}” get)</option>
              {[...list].reverse().map((v) => (
                <option key={v.version} value={String(v.version)}>
                  v{v.version}
                </option>
              ))}
              {aliases.map((a) => (
                <option key={a} value={`@${a}`}>
                  alias {a}
                </option>
              ))}
            </select>
          </fieldset>
          <fieldset>
            <legend>Input</legend>
            {properties.length === 0 ? <p class="muted">This function takes no declared input.</p> : null}
            {properties.map(([key, prop]) => (
              <Field
                key={key}
                name={key}
                schema={prop}
                required={schema.required?.includes(key) ?? false}
                value={input[key] ?? ''}
                onChange={(v) => setInput((i) => ({ ...i, [key]: v }))}
              />
            ))}
          </fieldset>
          <fieldset class="params">
            <legend>Parameters</legend>
            {(['max_tokens', 'temperature', 'top_p', 'seed'] as const).map((p) => (
              <label key={p}>
                {p}
                <input
                  type="number"
                  name={p}
                  step={p === 'temperature' || p === 'top_p' ? '0.05' : '1'}
                  min="0"
                  placeholder={defaults[p] !== undefined && defaults[p] !== null ? String(defaults[p]) : 'default'}
                  value={params[p] ?? ''}
                  onInput={(e) => setParams((x) => ({ ...x, [p]: (e.target as HTMLInputElement).value }))}
                />
              </label>
            ))}
          </fieldset>
          <div class="row">
            <button type="submit" disabled={running || !session.can('functions:invoke')} data-testid="run">
              Run
            </button>
            <button type="button" class="danger" disabled={!running} onClick={stop} data-testid="stop">
              Stop
            </button>
            {running ? (
              <span role="status" class="muted">
                Generating…
              </span>
            ) : null}
            {!session.can('functions:invoke') ? <span class="muted">This credential lacks functions:invoke.</span> : null}
          </div>
        </form>
      </Section>
      <Section title="Output">
        <ErrorBox error={error} />
        {stopped ? (
          <p role="status" data-testid="stopped">
            Stopped: the generation was cancelled and its slot freed.
          </p>
        ) : null}
        <div class="output" aria-live="polite" aria-busy={running} data-testid="output" tabIndex={0}>
          {text || <span class="muted">Nothing yet.</span>}
        </div>
        <p class="muted">
          <span data-testid="token-updates">{updates}</span> token updates
        </p>
        {done ? <Result done={done} /> : null}
      </Section>
    </>
  );
}

function Field({ name, schema, required, value, onChange }: { name: string; schema: JsonSchema; required: boolean; value: string; onChange: (v: string) => void }) {
  const id = `input-${name}`;
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== 'null') : schema.type;
  const label = (
    <span>
      {name}
      {required ? <span aria-hidden="true"> *</span> : null}
      {schema.description ? <span class="muted"> — {schema.description}</span> : null}
    </span>
  );
  const set = (e: Event) => onChange((e.target as HTMLInputElement).value);
  if (schema.enum) {
    return (
      <label for={id}>
        {label}
        <select id={id} name={name} value={value} onChange={set} required={required}>
          <option value="">{required ? 'Choose…' : '(none)'}</option>
          {schema.enum.map((v) => (
            <option key={String(v)} value={JSON.stringify(v)}>
              {String(v)}
            </option>
          ))}
        </select>
      </label>
    );
  }
  if (type === 'boolean') {
    return (
      <label for={id} class="check">
        <input id={id} name={name} type="checkbox" checked={value === 'true'} onChange={(e) => onChange(String((e.target as HTMLInputElement).checked))} />
        {label}
      </label>
    );
  }
  if (type === 'number' || type === 'integer') {
    return (
      <label for={id}>
        {label}
        <input id={id} name={name} type="number" step={type === 'integer' ? '1' : 'any'} value={value} onInput={set} required={required} />
      </label>
    );
  }
  if (type === 'string') {
    const long = (schema.maxLength ?? 1000) > 200;
    return (
      <label for={id}>
        {label}
        {long ? (
          <textarea id={id} name={name} rows={3} value={value} onInput={set} required={required} />
        ) : (
          <input id={id} name={name} type="text" value={value} onInput={set} required={required} maxLength={schema.maxLength} />
        )}
      </label>
    );
  }
  // Arrays and objects (and anything untyped) are typed as JSON.
  return (
    <label for={id}>
      {label} <span class="muted">(JSON)</span>
      <textarea id={id} name={name} rows={3} value={value} onInput={set} required={required} spellcheck={false} />
    </label>
  );
}

function buildInput(schema: JsonSchema, values: Record<string, string>): Record<string, unknown> {
  const input: Record<string, unknown> = {};
  for (const [key, prop] of Object.entries(schema.properties ?? {})) {
    const raw = values[key];
    if (raw === undefined || raw === '') continue;
    const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== 'null') : prop.type;
    try {
      if (prop.enum) input[key] = JSON.parse(raw);
      else if (type === 'string') input[key] = raw;
      else if (type === 'boolean') input[key] = raw === 'true';
      else if (type === 'number' || type === 'integer') input[key] = Number(raw);
      else input[key] = JSON.parse(raw);
    } catch {
      throw new ApiError(0, 'invalid_input', `“${key}” is not valid JSON`, key);
    }
  }
  return input;
}

function buildParams(values: Record<string, string>): Schemas['Params'] {
  const params: Record<string, number> = {};
  for (const [key, raw] of Object.entries(values)) if (raw !== '') params[key] = Number(raw);
  return params as Schemas['Params'];
}

function Result({ done }: { done: StreamDone }) {
  return (
    <div data-testid="result">
      <dl class="facts">
        <dt>Invocation</dt>
        <dd>
          <a href={href(['invocations', done.invocation_id])} data-testid="invocation-link">
            {done.invocation_id}
          </a>
        </dd>
        <dt>Version</dt>
        <dd>
          v{done.version}
          {done.alias ? ` (alias ${done.alias})` : ''}
        </dd>
        <dt>Finish</dt>
        <dd>{done.finish_reason}</dd>
        <UsageFacts usage={done.usage} cacheHit={done.cache_hit} timings={done.timings} />
      </dl>
      {done.json ? (
        <>
          <h3>Structured output</h3>
          <Json value={done.json} label="Structured output, parsed" />
        </>
      ) : null}
    </div>
  );
}
