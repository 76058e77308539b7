import { useEffect, useState } from 'preact/hooks';
import { ApiError, client, unwrap, type Schemas } from '../api';
import type { Session } from '../main';
import { Section, href, navigate } from '../ui';

const SKELETON = {
  name: 'my-function',
  model: 'smollm2-135m',
  system: 'You are a concise copywriter.',
  prompt: 'Write one sentence about {{ topic }}.',
  input_schema: {
    type: 'object',
    properties: { topic: { type: 'string', maxLength: 200 } },
    required: ['topic'],
  },
  params: { max_tokens: 48, temperature: 0.7 },
};

/**
 * Deploy a definition written as JSON. The server validates it with the same rules as any
 * deploy; a refusal is shown with the field it concerns. A credential without
 * `functions:write` is never offered this page, and gets the server's 403 if it comes anyway.
 */
export function Deploy({ session, name, from }: { session: Session; name?: string; from?: string }) {
  const [text, setText] = useState(name ? '' : JSON.stringify(SKELETON, null, 2));
  const [error, setError] = useState<ApiError | undefined>();
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (!name) return;
    unwrap(client.GET('/v1/functions/{name}/versions', { params: { path: { name } } })).then(
      ({ versions }) => {
        const wanted = versions.find((v) => String(v.version) === from) ?? versions[versions.length - 1];
        if (wanted) setText(JSON.stringify(wanted.definition, null, 2));
      },
      (e: unknown) => e instanceof ApiError && setError(e),
    );
  }, [name, from]);

  async function submit(e: Event) {
    e.preventDefault();
    let definition: Schemas['FunctionDefinition'];
    try {
      definition = JSON.parse(text) as Schemas['FunctionDefinition'];
    } catch (err) {
      setError(new ApiError(0, 'invalid_json', `The definition is not JSON: ${(err as Error).message}`));
      return;
    }
    if (typeof definition !== 'object' || definition === null || Array.isArray(definition)) {
      setError(new ApiError(0, 'invalid_json', 'The definition must be a JSON object.'));
      return;
    }
    setBusy(true);
    try {
      const deployed = await unwrap(client.POST('/v1/functions', { body: definition }));
      setError(undefined);
      navigate(href(['functions', deployed.name], { deployed: String(deployed.version) }));
    } catch (err) {
      setError(err instanceof ApiError ? err : new ApiError(0, 'unreachable', String(err)));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Section title={name ? `Deploy a new version of ${name}` : 'Deploy a function'}>
      {!session.can('functions:write') ? (
        <p class="muted">This credential lacks the functions:write scope; genrt will refuse a deploy.</p>
      ) : null}
      <form onSubmit={submit} class="editor">
        <label for="definition">Definition (JSON)</label>
        <textarea
          id="definition"
          rows={24}
          spellcheck={false}
          value={text}
          onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
          aria-invalid={error ? true : undefined}
          aria-describedby={error ? 'deploy-error' : undefined}
        />
        {error ? (
          <div id="deploy-error" class="error" role="alert" data-testid="deploy-error">
            {error.field ? (
              <>
                At <code data-testid="deploy-error-field">{error.field}</code>:{' '}
              </>
            ) : null}
            {error.message}
            {error.status > 0 ? (
              <span class="code">
                {' '}
                ({error.status} <code>{error.code}</code>)
              </span>
            ) : null}
          </div>
        ) : null}
        <button type="submit" disabled={busy}>
          {busy ? 'Deploying…' : 'Deploy'}
        </button>
      </form>
    </Section>
  );
}
