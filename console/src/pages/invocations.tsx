import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, client, unwrap, type Schemas } from '../api';
import type { Session } from '../main';
import { ErrorBox, Json, Loading, Section, StatusBadge, UsageFacts, href, ms, navigate, useResource, when } from '../ui';

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const MODES = ['sync', 'stream', 'async', 'batch', 'trigger', 'evaluate', 'prewarm', 'openai', 'openai_stream', 'shadow'];
const FILTERS = ['function', 'status', 'mode', 'from', 'to'] as const;
type Record_ = Schemas['InvocationRecord'];

/** Rows of both lists, each once (the later list's copy wins), newest first. */
function merged(a: Record_[], b: Record_[]): Record_[] {
  const byId = new Map<string, Record_>();
  for (const r of [...a, ...b]) byId.set(r.invocation_id, r);
  return [...byId.values()].sort((x, y) => (x.invocation_id < y.invocation_id ? 1 : x.invocation_id > y.invocation_id ? -1 : 0));
}

function toIso(local: string | null): string | undefined {
  if (!local) return undefined;
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

export function Invocations({ session, query }: { session: Session; query: URLSearchParams }) {
  const filter = Object.fromEntries(FILTERS.map((f) => [f, query.get(f) ?? ''])) as Record<(typeof FILTERS)[number], string>;
  const [auto, setAuto] = useState(true);
  // Older pages, loaded on demand, and whether more remain; cleared when the filters change.
  const [older, setOlder] = useState<{ key: string; rows: Record_[]; more: boolean } | undefined>();
  const [loadingMore, setLoadingMore] = useState(false);
  const [moreError, setMoreError] = useState<ApiError | undefined>();
  const key = FILTERS.map((f) => filter[f]).join('|');
  const params = {
    function: filter.function || undefined,
    status: filter.status || undefined,
    mode: filter.mode || undefined,
    from: toIso(filter.from),
    to: toIso(filter.to),
  };
  const first = useResource(
    () => unwrap(client.GET('/v1/invocations', { params: { query: { ...params, limit: 50 } } })),
    `invocations:${key}`,
    auto ? 3000 : undefined,
  );
  const functions = useResource(() => unwrap(client.GET('/v1/functions')), 'invocation-filter-functions');

  // The newest page is refreshed; rows that newer arrivals push off it move to the older
  // rows once those are being shown, so that nothing loaded disappears. Ids are UUIDv7, so
  // their order is the time order the server pages by.
  const previous = useRef<{ key: string; rows: Record_[] }>({ key, rows: [] });
  useEffect(() => {
    const fresh = first.data?.invocations;
    if (!fresh) return;
    const last = fresh[fresh.length - 1]?.invocation_id;
    const before = previous.current;
    previous.current = { key, rows: fresh };
    if (before.key !== key || last === undefined) return;
    const pushed = before.rows.filter((r) => r.invocation_id < last);
    if (pushed.length) setOlder((o) => (o && o.key === key ? { ...o, rows: merged(pushed, o.rows) } : o));
  }, [first.data, key]);

  const newest = first.data?.invocations ?? [];
  const boundary = newest[newest.length - 1]?.invocation_id;
  const kept = older?.key === key ? older : undefined;
  // The newest page speaks for its own range: an older row inside it has left the filter.
  const rows = [...newest, ...(kept?.rows ?? []).filter((r) => boundary === undefined || r.invocation_id < boundary)];
  const more = kept ? kept.more : Boolean(first.data?.next_cursor);

  function apply(e: Event) {
    e.preventDefault();
    const form = new FormData(e.target as HTMLFormElement);
    const next: Record<string, string | undefined> = {};
    for (const f of FILTERS) next[f] = (form.get(f) as string) || undefined;
    navigate(href(['invocations'], next));
  }

  async function loadOlder() {
    const cursor = rows[rows.length - 1]?.invocation_id;
    if (!cursor || loadingMore) return;
    setLoadingMore(true);
    try {
      const page = await unwrap(client.GET('/v1/invocations', { params: { query: { ...params, limit: 50, cursor } } }));
      setOlder((o) => ({
        key,
        rows: merged(o?.key === key ? o.rows : [], page.invocations),
        more: Boolean(page.next_cursor),
      }));
      setMoreError(undefined);
    } catch (e) {
      if (e instanceof ApiError) setMoreError(e);
    } finally {
      setLoadingMore(false);
    }
  }

  return (
    <Section title="Invocations">
      <form class="filters" onSubmit={apply} aria-label="Filter invocations">
        <label>
          Function
          <select name="function" value={filter.function}>
            <option value="">any</option>
            {functions.data?.functions.map((f) => (
              <option key={f.name} value={f.name}>
                {f.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Status
          <select name="status" value={filter.status}>
            <option value="">any</option>
            {STATUSES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          Mode
          <select name="mode" value={filter.mode}>
            <option value="">any</option>
            {MODES.map((m) => (
              <option key={m}>{m}</option>
            ))}
          </select>
        </label>
        <label>
          From
          <input type="datetime-local" name="from" value={filter.from} />
        </label>
        <label>
          To
          <input type="datetime-local" name="to" value={filter.to} />
        </label>
        <button type="submit">Apply</button>
        <label class="check">
          <input type="checkbox" checked={auto} onChange={(e) => setAuto((e.target as HTMLInputElement).checked)} />
          Refresh every 3 s
        </label>
      </form>
      <ErrorBox error={first.error} />
      {first.loading && !first.data ? <Loading what="invocations" /> : null}
      {first.data && rows.length === 0 ? <p>No invocations match.</p> : null}
      {rows.length ? (
        <div class="table-wrap">
          <table data-testid="invocations">
            <thead>
              <tr>
                <th scope="col">Invocation</th>
                <th scope="col">Function</th>
                <th scope="col">Mode</th>
                <th scope="col">Status</th>
                <th scope="col">Created</th>
                <th scope="col" class="num">Tokens</th>
                <th scope="col" class="num">Total</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r) => (
                <tr key={r.invocation_id} data-invocation={r.invocation_id}>
                  <td>
                    <a href={href(['invocations', r.invocation_id])}>
                      <code>{r.invocation_id.slice(0, 8)}</code>
                      <span class="sr-only"> invocation {r.invocation_id}</span>
                    </a>
                  </td>
                  <td>
                    {r.function} v{r.version}
                  </td>
                  <td>
                    {r.mode}
                    {r.batch_id ? (
                      <>
                        {' '}
                        <a href={href(['batches', r.batch_id])}>batch</a>
                      </>
                    ) : null}
                  </td>
                  <td>
                    <StatusBadge status={r.status} />
                  </td>
                  <td>{when(r.created_at)}</td>
                  <td class="num">{r.usage.prompt_tokens + r.usage.completion_tokens}</td>
                  <td class="num">{ms(r.timings.total_ms)}</td>
                  <td>
                    {(r.status === 'queued' || r.status === 'running') && session.can('functions:invoke') ? (
                      <CancelButton id={r.invocation_id} onDone={first.reload} />
                    ) : null}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      <ErrorBox error={moreError} />
      {more ? (
        <button type="button" class="secondary" onClick={loadOlder} disabled={loadingMore}>
          Load older
        </button>
      ) : null}
    </Section>
  );
}

function CancelButton({ id, onDone }: { id: string; onDone: () => void }) {
  const [error, setError] = useState<ApiError | undefined>();
  return (
    <>
      <button
        type="button"
        class="danger small"
        onClick={async () => {
          try {
            await unwrap(client.POST('/v1/invocations/{id}/cancel', { params: { path: { id } } }));
            setError(undefined);
          } catch (e) {
            if (e instanceof ApiError) setError(e);
          }
          onDone();
        }}
      >
        Cancel<span class="sr-only"> invocation {id}</span>
      </button>
      <ErrorBox error={error} />
    </>
  );
}

export function InvocationDetail({ session, id }: { session: Session; id: string }) {
  const record = useResource(
    () => unwrap(client.GET('/v1/invocations/{id}', { params: { path: { id } } })),
    `invocation:${id}`,
    2000,
  );
  const canSeeDeliveries = session.can('webhooks:write') || session.can('invocations:read');
  const deliveries = useResource(
    () =>
      canSeeDeliveries
        ? unwrap(client.GET('/v1/webhooks/deliveries', { params: { query: { invocation_id: id } } }))
        : Promise.resolve({ deliveries: [] }),
    `deliveries:${id}`,
  );
  const r = record.data;
  return (
    <>
      <Section
        title={`Invocation ${id.slice(0, 8)}`}
        actions={
          r && (r.status === 'queued' || r.status === 'running') && session.can('functions:invoke') ? (
            <CancelButton id={id} onDone={record.reload} />
          ) : null
        }
      >
        <ErrorBox error={record.error} />
        {record.loading && !r ? <Loading what="the invocation" /> : null}
        {r ? (
          <dl class="facts" data-testid="invocation-detail">
            <dt>Id</dt>
            <dd>
              <code>{r.invocation_id}</code>
            </dd>
            <dt>Function</dt>
            <dd>
              <a href={href(['functions', r.function])}>{r.function}</a> v{r.version}
              {r.alias ? ` (alias ${r.alias}${r.split ? ', split' : ''})` : ''}
            </dd>
            <dt>Status</dt>
            <dd>
              <StatusBadge status={r.status} />
              {r.finish_reason ? ` (${r.finish_reason})` : ''}
            </dd>
            <dt>Mode</dt>
            <dd>
              {r.mode}
              {r.batch_id ? (
                <>
                  {' '}
                  in <a href={href(['batches', r.batch_id])}>batch {r.batch_id.slice(0, 8)}</a> item {r.batch_index}
                </>
              ) : null}
              {r.shadow_of ? (
                <>
                  {' '}
                  shadow of <a href={href(['invocations', r.shadow_of])}>{r.shadow_of.slice(0, 8)}</a>
                </>
              ) : null}
            </dd>
            <dt>Model</dt>
            <dd>{r.model ?? '—'}</dd>
            <dt>Created</dt>
            <dd>{when(r.created_at)}</dd>
            <dt>Completed</dt>
            <dd>{when(r.completed_at)}</dd>
            <dt>Attempts</dt>
            <dd>{r.attempts}</dd>
            <UsageFacts usage={r.usage} cacheHit={r.cache_hit} timings={r.timings} />
          </dl>
        ) : null}
      </Section>
      {r ? (
        <Section title="Input and output">
          <h3>Input</h3>
          <Json value={r.input} label="Input" />
          {r.output ? (
            <>
              <h3>Output</h3>
              <pre class="output" data-testid="invocation-output" tabIndex={0}>
                {r.output.text}
              </pre>
              {r.output.json ? <Json value={r.output.json} label="Structured output" /> : null}
            </>
          ) : null}
          {r.error ? (
            <>
              <h3>Error</h3>
              <div class="error">
                <code>{r.error.code}</code>: {r.error.message}
              </div>
            </>
          ) : null}
        </Section>
      ) : null}
      <Section title="Webhook deliveries">
        <ErrorBox error={deliveries.error} />
        {deliveries.data && deliveries.data.deliveries.length === 0 ? <p class="muted">No webhook deliveries for this invocation.</p> : null}
        {deliveries.data?.deliveries.map((d) => (
          <Delivery key={d.id} delivery={d} />
        ))}
      </Section>
    </>
  );
}

export function Delivery({ delivery: d }: { delivery: Schemas['DeliveryInfo'] }) {
  return (
    <details class="delivery">
      <summary>
        <StatusBadge status={d.status} /> {d.event} to <code>{d.url}</code>, {d.attempts.length} attempts, {when(d.created_at)}
      </summary>
      <Attempts attempts={d.attempts} />
    </details>
  );
}

/** A delivery's attempts: when, the receiver's answer, how long it took. */
export function Attempts({ attempts }: { attempts: Schemas['AttemptInfo'][] }) {
  return (
    <ol>
      {attempts.map((a) => (
        <li key={a.attempt}>
          {when(a.attempted_at)}: {a.status_code ?? 'no answer'} in {ms(a.duration_ms)}
          {a.error ? ` (${a.error})` : ''}
        </li>
      ))}
    </ol>
  );
}

export function Batch({ id }: { id: string }) {
  const info = useResource(() => unwrap(client.GET('/v1/batches/{id}', { params: { path: { id } } })), `batch:${id}`, 3000);
  const results = useResource(async () => {
    const { data, error, response } = await client.GET('/v1/batches/{id}/results', {
      params: { path: { id } },
      parseAs: 'text',
    });
    if (!response.ok) await unwrap(Promise.resolve({ data, error, response }));
    return (data as unknown as string)
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Schemas['BatchResultLine']);
  }, `batch-results:${id}`, 3000);
  const b = info.data;
  const finished = b ? (b.counts.succeeded ?? 0) + (b.counts.failed ?? 0) + (b.counts.cancelled ?? 0) : 0;
  return (
    <>
      <Section title={`Batch ${id.slice(0, 8)}`}>
        <ErrorBox error={info.error} />
        {b ? (
          <>
            <p>
              {b.function} v{b.version}, {b.status}, created {when(b.created_at)}
            </p>
            <label for="batch-progress">
              {finished} of {b.total} done
            </label>
            <progress id="batch-progress" max={b.total} value={finished} />
            <p class="muted">{Object.entries(b.counts).map(([k, v]) => `${k} ${v}`).join(', ')}</p>
          </>
        ) : null}
      </Section>
      <Section title="Results">
        <ErrorBox error={results.error} />
        {results.data ? (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">#</th>
                  <th scope="col">Status</th>
                  <th scope="col">Output or error</th>
                </tr>
              </thead>
              <tbody>
                {results.data.map((line) => (
                  <tr key={line.index}>
                    <td>
                      <a href={href(['invocations', line.invocation_id])}>{line.index}</a>
                    </td>
                    <td>
                      <StatusBadge status={line.status} />
                    </td>
                    <td>{line.error ? `${line.error.code}: ${line.error.message}` : line.output ? JSON.stringify(line.output) : '—'}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </Section>
    </>
  );
}
