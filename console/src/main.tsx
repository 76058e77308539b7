import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import './style.css';
import { ApiError, hasCredential, isOffline, onConnectionChange, onUnauthorized, setCredential, whoAmI, type Me } from './api';
import { ErrorBox, href, useRoute } from './ui';
import { SignIn } from './pages/signin';
import { FunctionDetail, Functions } from './pages/functions';
import { Deploy } from './pages/deploy';
import { Playground } from './pages/playground';
import { Batch, InvocationDetail, Invocations } from './pages/invocations';
import { Usage } from './pages/usage';
import { Models } from './pages/models';
import { Webhooks } from './pages/webhooks';
import { Admin } from './pages/admin';

export interface Session {
  me: Me;
  can: (scope: string) => boolean;
}

function App() {
  const [me, setMe] = useState<Me | undefined>();
  const [checking, setChecking] = useState(hasCredential());
  const [signInError, setSignInError] = useState<ApiError | undefined>();
  const [offline, setOffline] = useState(isOffline());

  useEffect(() => onConnectionChange(() => setOffline(isOffline())), []);
  useEffect(() => {
    onUnauthorized((e) => {
      setCredential(null);
      setMe(undefined);
      setSignInError(e);
    });
    if (!hasCredential()) return;
    // A stored credential is dropped only when genrt refuses it; while the server is away
    // or failing, the check waits and is made again when it answers.
    let retry: number | undefined;
    let off: (() => void) | undefined;
    const check = () => {
      whoAmI().then(
        (m) => {
          setMe(m);
          setChecking(false);
        },
        (e: unknown) => {
          if (e instanceof ApiError && e.status === 401) {
            setCredential(null);
            setSignInError(e);
            setChecking(false);
          } else if (e instanceof ApiError) {
            retry = window.setTimeout(check, 2000);
          } else {
            off?.();
            off = onConnectionChange(() => {
              if (!isOffline()) {
                off?.();
                check();
              }
            });
          }
        },
      );
    };
    check();
    return () => {
      off?.();
      window.clearTimeout(retry);
    };
  }, []);

  const banner = offline ? (
    <div class="banner" role="status" aria-live="assertive" data-testid="reconnecting">
      The connection to genrt was lost. Reconnecting…
    </div>
  ) : null;

  if (checking) {
    return (
      <>
        {banner}
        <p class="muted" role="status">
          Signing in…
        </p>
      </>
    );
  }
  if (!me) {
    return (
      <>
        {banner}
        <SignIn
          error={signInError}
          onSignedIn={(m) => {
            setSignInError(undefined);
            setMe(m);
          }}
        />
      </>
    );
  }
  const session: Session = { me, can: (scope) => me.scopes.includes(scope) };
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <Header
        session={session}
        onSignOut={() => {
          setCredential(null);
          setMe(undefined);
        }}
      />
      {banner}
      <main id="main" tabIndex={-1}>
        <Page session={session} />
      </main>
    </>
  );
}

/** The sections, each offered to credentials holding one of its scopes (none: any). */
const SECTIONS: { id: string; label: string; scopes?: string[] }[] = [
  { id: 'functions', label: 'Functions', scopes: ['functions:write', 'functions:invoke'] },
  { id: 'playground', label: 'Playground', scopes: ['functions:invoke'] },
  { id: 'invocations', label: 'Invocations', scopes: ['invocations:read'] },
  { id: 'usage', label: 'Usage', scopes: ['invocations:read'] },
  { id: 'models', label: 'Models' },
  { id: 'webhooks', label: 'Webhooks', scopes: ['webhooks:write', 'invocations:read'] },
  { id: 'admin', label: 'Admin', scopes: ['admin'] },
];

function offered(session: Session) {
  return SECTIONS.filter((s) => !s.scopes || s.scopes.some(session.can));
}

function Header({ session, onSignOut }: { session: Session; onSignOut: () => void }) {
  const route = useRoute();
  const section = route.parts[0] ?? offered(session)[0].id;
  return (
    <header>
      <div class="brand">
        <strong>genrt</strong> console
      </div>
      <nav aria-label="Sections">
        <ul>
          {offered(session).map((s) => (
            <li key={s.id}>
              <a href={href([s.id])} aria-current={section === s.id ? 'page' : undefined}>
                {s.label}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <div class="who">
        <span title={session.me.scopes.join(' ')}>
          tenant <strong data-testid="tenant">{session.me.tenant}</strong>
        </span>
        <button type="button" class="link" onClick={onSignOut}>
          Sign out
        </button>
      </div>
    </header>
  );
}

function Page({ session }: { session: Session }) {
  const route = useRoute();
  const [section = offered(session)[0].id, arg] = route.parts;
  const first = useRef(true);
  useEffect(() => {
    document.title = `${section} · genrt console`;
    // After a move to another page, keyboard and screen-reader users start at its content;
    // on the first load the browser's own order (the skip link first) is kept.
    if (first.current) first.current = false;
    else document.getElementById('main')?.focus({ preventScroll: true });
  }, [section, arg]);
  switch (section) {
    case 'functions':
      return arg ? <FunctionDetail session={session} name={arg} /> : <Functions session={session} />;
    case 'deploy':
      return <Deploy session={session} name={arg} from={route.query.get('from') ?? undefined} />;
    case 'playground':
      return <Playground session={session} name={arg} version={route.query.get('version') ?? undefined} />;
    case 'invocations':
      return arg ? <InvocationDetail session={session} id={arg} /> : <Invocations session={session} query={route.query} />;
    case 'batches':
      return <Batch id={arg ?? ''} />;
    case 'usage':
      return <Usage query={route.query} />;
    case 'models':
      return <Models />;
    case 'webhooks':
      return <Webhooks session={session} />;
    case 'admin':
      return <Admin />;
    default:
      return <ErrorBox error={new ApiError(404, 'not_found', `no page “${section}”`)} />;
  }
}

render(<App />, document.getElementById('app')!);
