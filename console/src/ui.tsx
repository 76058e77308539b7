// Small pieces every page uses: the hash router, data loading with polling, formatting and
// the error box. Written here rather than taken from libraries because each is a few lines
// and the console's whole first load must stay small.
import type { ComponentChildren } from 'preact';
import { useCallback, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { ApiError, isOffline, onConnectionChange, type Schemas } from './api';

// ----------------------------------------------------------------------------------------
// Routing: `#/section/arg?key=value`. A hash keeps the server's side to one static page and
// keeps everything out of the requests the browser sends.

export interface Route {
  parts: string[];
  query: URLSearchParams;
}

function parse(hash: string): Route {
  const [path, search] = hash.replace(/^#\/?/, '').split('?', 2);
  return {
    parts: path.split('/').filter(Boolean).map(decodeURIComponent),
    query: new URLSearchParams(search ?? ''),
  };
}

export function useRoute(): Route {
  const [hash, setHash] = useState(() => location.hash);
  useEffect(() => {
    const changed = () => setHash(location.hash);
    window.addEventListener('hashchange', changed);
    // Effects run after the first paint: a hash changed between that render and the line
    // above fired an event nobody heard (a link followed as soon as the page showed), so
    // read it once more now. An unchanged hash renders nothing again.
    changed();
    return () => window.removeEventListener('hashchange', changed);
  }, []);
  return useMemo(() => parse(hash), [hash]);
}

export function href(parts: string[], query?: Record<string, string | undefined>): string {
  const path = parts.map(encodeURIComponent).join('/');
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v) q.set(k, v);
  const search = q.toString();
  return `#/${path}${search ? `?${search}` : ''}`;
}

export function navigate(to: string): void {
  location.hash = to;
}

// ----------------------------------------------------------------------------------------
// Loading data: once, on a change of `key`, every `pollMs` while the tab is visible, and
// again when the server comes back after a lost connection.

export interface Resource<T> {
  data?: T;
  error?: ApiError;
  loading: boolean;
  reload: () => void;
}

export function useResource<T>(load: () => Promise<T>, key: string, pollMs?: number): Resource<T> {
  const [state, setState] = useState<{ data?: T; error?: ApiError; loading: boolean }>({
    loading: true,
  });
  const loadRef = useRef(load);
  loadRef.current = load;
  const generation = useRef(0);
  const inFlight = useRef(false);

  const reload = useCallback(() => {
    const mine = ++generation.current;
    inFlight.current = true;
    const settle = () => {
      if (mine === generation.current) inFlight.current = false;
    };
    loadRef.current().then(
      (data) => {
        settle();
        if (mine === generation.current) setState({ data, loading: false });
      },
      (e: unknown) => {
        settle();
        if (mine !== generation.current) return;
        // An unreachable server is shown once, by the banner; the last data stays.
        if (!(e instanceof ApiError)) {
          setState((s) => ({ ...s, loading: false }));
          return;
        }
        setState((s) => ({ data: s.data, error: e, loading: false }));
      },
    );
  }, []);

  useEffect(() => {
    setState({ loading: true });
    reload();
    const off = onConnectionChange(() => {
      if (!isOffline()) reload();
    });
    let timer: number | undefined;
    if (pollMs) {
      // A poll never overtakes an answer still on its way: on a slow server each answer
      // would otherwise be superseded before it arrives, and the page would never fill.
      timer = window.setInterval(() => {
        if (!document.hidden && !isOffline() && !inFlight.current) reload();
      }, pollMs);
    }
    return () => {
      off();
      if (timer !== undefined) window.clearInterval(timer);
      generation.current++;
      inFlight.current = false;
    };
  }, [key, pollMs, reload]);

  return { ...state, reload };
}

// ----------------------------------------------------------------------------------------
// Display.

export function ErrorBox({ error, prefix }: { error?: unknown; prefix?: string }) {
  if (!error) return null;
  const e = error as ApiError;
  const text = e instanceof ApiError ? e.message : String(error);
  return (
    <div class="error" role="alert">
      {prefix ? `${prefix}: ` : ''}
      {text}
      {e instanceof ApiError && e.status > 0 ? (
        <span class="code">
          {' '}
          ({e.status} <code>{e.code}</code>
          {e.field ? (
            <>
              , field <code>{e.field}</code>
            </>
          ) : null}
          )
        </span>
      ) : null}
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <p class="muted" role="status">
      Loading {what}…
    </p>
  );
}

export function Section({ title, children, actions }: { title: string; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <section aria-label={title}>
      <div class="section-head">
        <h2>{title}</h2>
        {actions ? <div class="actions">{actions}</div> : null}
      </div>
      {children}
    </section>
  );
}

export function when(iso?: string | null): string {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}

export function ms(value?: number | null): string {
  if (value === undefined || value === null) return '—';
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

export function bytes(value?: number | null): string {
  if (!value) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = value;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function num(value?: number | null): string {
  return value === undefined || value === null ? '—' : value.toLocaleString();
}

export function percent(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)} %` : '—';
}

export function Json({ value, label }: { value: unknown; label: string }) {
  return (
    <pre class="json" aria-label={label} tabIndex={0}>
      {JSON.stringify(value, null, 2)}
    </pre>
  );
}

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge badge-${status}`}>{status}</span>;
}

/** Tokens, cache and timings of one invocation, as `<dt>/<dd>` pairs of a `.facts` list. */
export function UsageFacts({ usage, cacheHit, timings }: { usage: Schemas['UsageInfo']; cacheHit: boolean; timings: Schemas['TimingsInfo'] }) {
  const t = timings;
  return (
    <>
      <dt>Tokens</dt>
      <dd>
        {usage.prompt_tokens} prompt ({usage.cached_prompt_tokens ?? 0} cached), {usage.completion_tokens} completion
      </dd>
      <dt>Cache</dt>
      <dd>{cacheHit ? 'hit (served from the response cache)' : 'miss'}</dd>
      <dt>Timings</dt>
      <dd>
        queue {ms(t.queue_ms)}, load {ms(t.load_ms)}, prefill {ms(t.prefill_ms)}, first token {ms(t.ttft_ms)}, decode{' '}
        {ms(Math.max(0, t.total_ms - t.ttft_ms))}, total {ms(t.total_ms)}
      </dd>
    </>
  );
}
