import { useState } from 'preact/hooks';
import { ApiError, setCredential, whoAmI, type Me } from '../api';

/** Sign in with an API key (`grt_…`) or a JWT of the tenant. */
export function SignIn({ error, onSignedIn }: { error?: ApiError; onSignedIn: (me: Me) => void }) {
  const [value, setValue] = useState('');
  const [busy, setBusy] = useState(false);
  const [failure, setFailure] = useState<ApiError | undefined>();
  const shown = failure ?? error;

  async function submit(e: Event) {
    e.preventDefault();
    const credential = value.trim();
    if (!credential) {
      setFailure(new ApiError(0, 'missing_credentials', 'Paste an API key or a token first.'));
      return;
    }
    setBusy(true);
    setCredential(credential);
    try {
      const me = await whoAmI();
      setFailure(undefined);
      onSignedIn(me);
    } catch (err) {
      setCredential(null);
      setFailure(
        err instanceof ApiError
          ? err
          : new ApiError(0, 'unreachable', 'genrt did not answer. Is the server running?'),
      );
    } finally {
      setBusy(false);
    }
  }

  return (
    <main id="main" class="signin">
      <h1>genrt console</h1>
      <form onSubmit={submit} aria-describedby={shown ? 'signin-error' : undefined}>
        <label for="credential">API key or token</label>
        <input
          id="credential"
          name="credential"
          type="password"
          autoComplete="off"
          spellcheck={false}
          value={value}
          onInput={(e) => setValue((e.target as HTMLInputElement).value)}
          placeholder="grt_… or eyJ…"
          aria-invalid={shown ? true : undefined}
        />
        <p class="muted">
          Kept in this tab's session storage until you sign out or close the tab. The console
          shows what this credential's scopes allow.
        </p>
        {shown ? (
          <div id="signin-error" class="error" role="alert" data-testid="signin-error">
            {shown.status === 401 ? 'Sign-in refused: ' : ''}
            {shown.message}
            {shown.status > 0 ? (
              <span class="code">
                {' '}
                ({shown.status} <code>{shown.code}</code>)
              </span>
            ) : null}
          </div>
        ) : null}
        <button type="submit" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
