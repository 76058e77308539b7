import { useState } from 'preact/hooks';
import { ApiError, client, unwrap } from '../api';
import type { Session } from '../main';
import { ErrorBox, Loading, Section, StatusBadge, href, useResource, when } from '../ui';
import { Attempts } from './invocations';

export function Webhooks({ session }: { session: Session }) {
  const canWrite = session.can('webhooks:write');
  return (
    <>
      {canWrite ? <Secrets /> : <p class="muted">Signing secrets and triggers need the webhooks:write scope.</p>}
      <Deliveries canWrite={canWrite} />
      {canWrite ? <Triggers /> : null}
    </>
  );
}

function Secrets() {
  const secrets = useResource(() => unwrap(client.GET('/v1/webhooks/secret')), 'webhook-secret');
  const [shown, setShown] = useState(false);
  const [overlap, setOverlap] = useState('3600');
  const [error, setError] = useState<ApiError | undefined>();
  const [message, setMessage] = useState('');

  async function rotate(e: Event) {
    e.preventDefault();
    if (!confirm('Rotate the signing secret? Receivers must learn the new one before the overlap ends.')) return;
    try {
      await unwrap(client.POST('/v1/webhooks/secret/rotate', { body: { overlap_s: Number(overlap) } }));
      setError(undefined);
      setMessage(`Rotated; the previous secret keeps signing for ${overlap} s.`);
      secrets.reload();
    } catch (err) {
      if (err instanceof ApiError) setError(err);
    }
  }

  return (
    <Section title="Signing secret">
      <p class="muted">
        Result webhooks are signed with the Standard Webhooks scheme. During a rotation's overlap every delivery carries a signature by each
        secret listed.
      </p>
      <ErrorBox error={secrets.error ?? error} />
      {secrets.data ? (
        <ul class="secrets">
          {secrets.data.secrets.map((s, i) => (
            <li key={i}>
              <code>{shown ? s : `${s.slice(0, 10)}…`}</code> {i === 0 ? '(current)' : '(previous, until its overlap ends)'}
            </li>
          ))}
        </ul>
      ) : null}
      <div class="row">
        <button type="button" class="secondary" onClick={() => setShown((s) => !s)} aria-pressed={shown}>
          {shown ? 'Hide secrets' : 'Show secrets'}
        </button>
      </div>
      <form class="row" onSubmit={rotate}>
        <label>
          Overlap (seconds)
          <input type="number" min="0" value={overlap} onInput={(e) => setOverlap((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit">Rotate secret</button>
      </form>
      {message ? <p role="status">{message}</p> : null}
    </Section>
  );
}

function Deliveries({ canWrite }: { canWrite: boolean }) {
  const deliveries = useResource(() => unwrap(client.GET('/v1/webhooks/deliveries', { params: { query: { limit: 100 } } })), 'deliveries', 5000);
  const [error, setError] = useState<ApiError | undefined>();
  const [message, setMessage] = useState('');

  async function redeliver(id: string) {
    try {
      await unwrap(client.POST('/v1/webhooks/deliveries/{id}/redeliver', { params: { path: { id } } }));
      setError(undefined);
      setMessage(`Delivery ${id.slice(0, 8)} queued again.`);
      deliveries.reload();
    } catch (err) {
      if (err instanceof ApiError) setError(err);
    }
  }

  const list = deliveries.data?.deliveries ?? [];
  return (
    <Section title="Deliveries">
      <ErrorBox error={deliveries.error ?? error} />
      {message ? <p role="status">{message}</p> : null}
      {deliveries.loading && !deliveries.data ? <Loading what="deliveries" /> : null}
      {deliveries.data && list.length === 0 ? <p class="muted">No webhook deliveries yet.</p> : null}
      {list.length ? (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Status</th>
                <th scope="col">Event</th>
                <th scope="col">Invocation</th>
                <th scope="col">URL</th>
                <th scope="col">Attempts</th>
                <th scope="col">Next attempt</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {list.map((d) => (
                <tr key={d.id}>
                  <td>
                    <StatusBadge status={d.status} />
                  </td>
                  <td>{d.event}</td>
                  <td>
                    <a href={href(['invocations', d.invocation_id])}>{d.invocation_id.slice(0, 8)}</a>
                  </td>
                  <td>
                    <code>{d.url}</code>
                  </td>
                  <td>
                    <details>
                      <summary>{d.attempts.length}</summary>
                      <Attempts attempts={d.attempts} />
                    </details>
                  </td>
                  <td>{d.status === 'pending' ? when(d.next_attempt_at) : '—'}</td>
                  <td>
                    {canWrite ? (
                      <button type="button" class="secondary small" onClick={() => redeliver(d.id)}>
                        Redeliver<span class="sr-only"> {d.id}</span>
                      </button>
                    ) : null}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </Section>
  );
}

function Triggers() {
  const triggers = useResource(async () => {
    const { functions } = await unwrap(client.GET('/v1/functions'));
    const lists = await Promise.all(
      functions.map((f) => unwrap(client.GET('/v1/functions/{name}/triggers', { params: { path: { name: f.name } } }))),
    );
    return lists.flatMap((l) => l.triggers);
  }, 'triggers');
  return (
    <Section title="Triggers">
      <p class="muted">Incoming signed webhooks that start a function: the URL to give the sender.</p>
      <ErrorBox error={triggers.error} />
      {triggers.data && triggers.data.length === 0 ? <p class="muted">No triggers.</p> : null}
      {triggers.data?.length ? (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Function</th>
                <th scope="col">URL</th>
                <th scope="col">Scheme</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {triggers.data.map((t) => (
                <tr key={t.id}>
                  <td>
                    <a href={href(['functions', t.function])}>{t.function}</a>
                  </td>
                  <td>
                    <code>{new URL(t.url, location.origin).href}</code>
                  </td>
                  <td>{String(t.scheme)}</td>
                  <td>{when(t.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </Section>
  );
}
