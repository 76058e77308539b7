import { useState } from 'preact/hooks';
import { client, unwrap, type Schemas } from '../api';
import type { Session } from '../main';
import { ErrorBox, Json, Loading, Section, href, percent, useResource, when } from '../ui';
import { diffLines } from '../diff';

type Definition = Schemas['FunctionDefinition'];

export function target(definition: Definition): string {
  if (definition.route) return `route by ${definition.route.field}`;
  return definition.model ?? '—';
}

interface Row {
  summary: Schemas['FunctionSummary'];
  definition?: Definition;
  usage?: Schemas['UsageEntry'];
}

export function Functions({ session }: { session: Session }) {
  const canRead = session.can('invocations:read');
  // The functions and their definitions are read once; only the usage figures are polled,
  // so that a refresh is one request rather than one per function.
  const functions = useResource(
    async () => {
      const { functions } = await unwrap(client.GET('/v1/functions'));
      const details = await Promise.all(
        functions.map((f) =>
          unwrap(client.GET('/v1/functions/{name}', { params: { path: { name: f.name } } })).catch(() => undefined),
        ),
      );
      return functions.map((summary, i) => ({ summary, definition: details[i]?.definition }));
    },
    'functions',
  );
  const usage = useResource(
    () =>
      canRead
        ? unwrap(client.GET('/v1/usage', { params: { query: { group_by: 'function' } } }))
        : Promise.resolve(undefined),
    'functions-usage',
    10000,
  );
  const list = {
    ...functions,
    data: functions.data?.map((f): Row => ({ ...f, usage: usage.data?.usage.find((u) => u.key === f.summary.name) })),
  };

  return (
    <Section
      title="Functions"
      actions={
        session.can('functions:write') ? (
          <a class="button" href={href(['deploy'])} data-testid="deploy-button">
            Deploy a function
          </a>
        ) : null
      }
    >
      <ErrorBox error={list.error} />
      {list.loading && !list.data ? <Loading what="functions" /> : null}
      {list.data && list.data.length === 0 ? <p>No functions yet.</p> : null}
      {list.data && list.data.length > 0 ? (
        <div class="table-wrap">
          <table>
            <caption class="sr-only">Functions of this tenant, last 30 days</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Latest</th>
                <th scope="col">Model or route</th>
                <th scope="col">Last invocation</th>
                <th scope="col" class="num">Invocations (30 d)</th>
                <th scope="col" class="num">Error rate</th>
              </tr>
            </thead>
            <tbody>
              {list.data.map(({ summary, definition, usage }) => (
                <tr key={summary.name} data-function={summary.name}>
                  <td>
                    <a href={href(['functions', summary.name])}>{summary.name}</a>
                  </td>
                  <td>v{summary.latest_version}</td>
                  <td>{definition ? target(definition) : '—'}</td>
                  <td>{canRead ? when(usage?.last_at) : '—'}</td>
                  <td class="num">{canRead ? (usage?.invocations ?? 0) : '—'}</td>
                  <td class="num">{usage ? percent(usage.errors, usage.invocations) : '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </Section>
  );
}

export function FunctionDetail({ session, name }: { session: Session; name: string }) {
  const versions = useResource(
    () => unwrap(client.GET('/v1/functions/{name}/versions', { params: { path: { name } } })),
    `versions:${name}`,
  );
  const list = versions.data?.versions ?? [];
  const newest = list.length ? Math.max(...list.map((v) => v.version)) : 0;
  const [left, setLeft] = useState<number | undefined>();
  const [right, setRight] = useState<number | undefined>();
  const a = left ?? Math.max(newest - 1, 1);
  const b = right ?? newest;
  const byNumber = (n: number) => list.find((v) => v.version === n);
  const latest = byNumber(newest);

  return (
    <>
      <Section
        title={`Function ${name}`}
        actions={
          <>
            <a class="button" href={href(['playground', name])}>
              Open in playground
            </a>
            {session.can('functions:write') ? (
              <a class="button secondary" href={href(['deploy', name], { from: String(newest) })}>
                Deploy a new version
              </a>
            ) : null}
          </>
        }
      >
        <ErrorBox error={versions.error} />
        {versions.loading && !versions.data ? <Loading what="versions" /> : null}
        {latest ? (
          <dl class="facts">
            <dt>Latest version</dt>
            <dd>v{latest.version}</dd>
            <dt>Model or route</dt>
            <dd>{target(latest.definition)}</dd>
            <dt>Deployed</dt>
            <dd>{when(latest.created_at)}</dd>
          </dl>
        ) : null}
      </Section>
      {list.length ? (
        <Section title="Versions">
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Version</th>
                  <th scope="col">Deployed</th>
                  <th scope="col">Aliases</th>
                  <th scope="col">Digest</th>
                  <th scope="col">Score (ROUGE-L)</th>
                  <th scope="col">Run</th>
                </tr>
              </thead>
              <tbody>
                {[...list].reverse().map((v) => (
                  <tr key={v.version}>
                    <td>v{v.version}</td>
                    <td>{when(v.created_at)}</td>
                    <td>{v.aliases.join(', ') || '—'}</td>
                    <td>
                      <code>{v.digest.slice(0, 12)}</code>
                    </td>
                    <td>{v.scores[0] ? v.scores[0].rouge_l.toFixed(3) : '—'}</td>
                    <td>
                      <a href={href(['playground', name], { version: String(v.version) })}>
                        Playground<span class="sr-only"> with v{v.version}</span>
                      </a>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </Section>
      ) : null}
      {list.length ? (
        <Section title="Compare versions">
          <div class="row">
            <VersionSelect label="From" versions={list} value={a} onChange={setLeft} />
            <VersionSelect label="To" versions={list} value={b} onChange={setRight} />
          </div>
          <Diff before={byNumber(a)?.definition} after={byNumber(b)?.definition} labels={[`v${a}`, `v${b}`]} />
        </Section>
      ) : null}
      {latest ? (
        <Section title="Latest definition">
          <Json value={latest.definition} label={`Definition of ${name} v${latest.version}`} />
        </Section>
      ) : null}
    </>
  );
}

/** Two definitions side by side, changed lines marked. */
function Diff({ before, after, labels }: { before?: Definition; after?: Definition; labels: [string, string] }) {
  if (!before || !after) return null;
  const rows = diffLines(JSON.stringify(before, null, 2), JSON.stringify(after, null, 2));
  const changed = rows.filter((r) => r.kind !== 'same').length;
  return (
    <div class="diff-wrap">
      <p class="muted" role="status">
        {changed === 0 ? 'The two definitions are identical.' : `${changed} changed lines.`}
      </p>
      <table class="diff" data-testid="version-diff">
        <thead>
          <tr>
            <th scope="col">{labels[0]}</th>
            <th scope="col">{labels[1]}</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r, i) => (
            <tr key={i} class={`diff-${r.kind}`}>
              <td>
                <span class="sr-only">{r.kind === 'removed' || r.kind === 'changed' ? 'removed: ' : ''}</span>
                {r.left ?? ''}
              </td>
              <td>
                <span class="sr-only">{r.kind === 'added' || r.kind === 'changed' ? 'added: ' : ''}</span>
                {r.right ?? ''}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function VersionSelect({ label, versions, value, onChange }: { label: string; versions: Schemas['VersionInfo'][]; value: number; onChange: (v: number) => void }) {
  return (
    <label>
      {label}{' '}
      <select value={value} onChange={(e) => onChange(Number((e.target as HTMLSelectElement).value))}>
        {versions.map((v) => (
          <option key={v.version} value={v.version}>
            v{v.version}
          </option>
        ))}
      </select>
    </label>
  );
}
