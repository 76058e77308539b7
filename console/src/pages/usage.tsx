import { client, unwrap, type Schemas } from '../api';
import { ErrorBox, Loading, Section, href, num, percent, useResource } from '../ui';

type Entry = Schemas['UsageEntry'];

const RANGES = [7, 30, 90];

export function Usage({ query }: { query: URLSearchParams }) {
  const days = RANGES.includes(Number(query.get('days'))) ? Number(query.get('days')) : 30;
  const report = useResource(async () => {
    const to = new Date();
    const from = new Date(to.getTime() - days * 86_400_000);
    const range = { from: from.toISOString(), to: to.toISOString() };
    const [byDay, byFunction, byError] = await Promise.all(
      (['day', 'function', 'error_code'] as const).map((group_by) =>
        unwrap(client.GET('/v1/usage', { params: { query: { ...range, group_by } } })),
      ),
    );
    return { byDay, byFunction, byError, from, to };
  }, `usage:${days}`, 15000);
  const r = report.data;
  return (
    <>
      <Section
        title="Usage"
        actions={
          <nav aria-label="Range" class="row">
            {RANGES.map((d) => (
              <a key={d} class={`button ${d === days ? '' : 'secondary'}`} href={href(['usage'], { days: String(d) })} aria-current={d === days ? 'page' : undefined}>
                {d} days
              </a>
            ))}
          </nav>
        }
      >
        <ErrorBox error={report.error} />
        {report.loading && !r ? <Loading what="usage" /> : null}
        {r ? (
          <>
            <Budget used={r.byDay.month_tokens} budget={r.byDay.monthly_token_budget} />
            <dl class="facts totals" data-testid="usage-totals">
              <dt>Invocations</dt>
              <dd data-testid="total-invocations">{num(r.byDay.total.invocations)}</dd>
              <dt>Tokens</dt>
              <dd>
                {num(r.byDay.total.prompt_tokens)} prompt, {num(r.byDay.total.completion_tokens)} completion
              </dd>
              <dt>Cache hit rate</dt>
              <dd>{percent(r.byDay.total.cache_hits, r.byDay.total.invocations)}</dd>
              <dt>Errors</dt>
              <dd>
                {num(r.byDay.total.errors)} ({percent(r.byDay.total.errors, r.byDay.total.invocations)})
              </dd>
            </dl>
          </>
        ) : null}
      </Section>
      {r ? (
        <>
          <Section title="Tokens per day">
            <DayChart entries={r.byDay.usage} from={r.from} to={r.to} testid="tokens-chart" value={(e) => [e.prompt_tokens, e.completion_tokens]} legend={['prompt', 'completion']} />
          </Section>
          <Section title="Invocations per day">
            <DayChart entries={r.byDay.usage} from={r.from} to={r.to} testid="invocations-chart" value={(e) => [e.invocations - e.errors, e.errors]} legend={['succeeded or running', 'failed']} />
          </Section>
          <Section title="By function">
            <Breakdown entries={r.byFunction.usage} label="Function" />
          </Section>
          <Section title="Error codes">
            <p class="muted">Invocations that ended with an error code: failures, and cancellations (<code>cancelled</code>).</p>
            {r.byError.usage.length === 0 ? <p class="muted">None in this range.</p> : <Breakdown entries={r.byError.usage} label="Error code" errors />}
          </Section>
        </>
      ) : null}
    </>
  );
}

function Budget({ used, budget }: { used: number; budget: number }) {
  if (!budget) {
    return (
      <p>
        Tokens this month: <strong>{num(used)}</strong> (no monthly budget set).
      </p>
    );
  }
  return (
    <div class="budget">
      <label for="budget">
        Tokens this month: <strong>{num(used)}</strong> of {num(budget)} ({percent(used, budget)})
      </label>
      <meter id="budget" min={0} max={budget} value={used} high={budget * 0.8} optimum={0} />
    </div>
  );
}

/**
 * Stacked bars per UTC day, drawn as SVG (a charting library would outweigh the console).
 * The same numbers are in a table for screen readers.
 */
function DayChart({ entries, from, to, value, legend, testid }: { entries: Entry[]; from: Date; to: Date; value: (e: Entry) => [number, number]; legend: [string, string]; testid: string }) {
  const days: string[] = [];
  for (let t = Date.UTC(from.getUTCFullYear(), from.getUTCMonth(), from.getUTCDate()); t <= to.getTime(); t += 86_400_000) {
    days.push(new Date(t).toISOString().slice(0, 10));
  }
  const byKey = new Map(entries.map((e) => [e.key, e]));
  const series = days.map((d) => {
    const e = byKey.get(d);
    return { day: d, values: e ? value(e) : ([0, 0] as [number, number]) };
  });
  const max = Math.max(1, ...series.map((s) => s.values[0] + s.values[1]));
  const total = series.reduce((sum, s) => sum + s.values[0] + s.values[1], 0);
  const width = 720;
  const height = 180;
  const bar = width / series.length;
  return (
    <figure class="chart" data-testid={testid} data-total={total}>
      <svg viewBox={`0 0 ${width} ${height + 20}`} role="img" aria-label={`${legend[0]} and ${legend[1]} per day: ${total} in all`} preserveAspectRatio="none">
        {series.map((s, i) => {
          const h0 = (s.values[0] / max) * height;
          const h1 = (s.values[1] / max) * height;
          return (
            <g key={s.day}>
              <title>{`${s.day}: ${s.values[0]} ${legend[0]}, ${s.values[1]} ${legend[1]}`}</title>
              <rect class="bar-a" x={i * bar + 1} y={height - h0} width={Math.max(1, bar - 2)} height={h0} />
              <rect class="bar-b" x={i * bar + 1} y={height - h0 - h1} width={Math.max(1, bar - 2)} height={h1} />
            </g>
          );
        })}
        <line x1="0" x2={width} y1={height} y2={height} class="axis" />
        <text x="0" y={height + 15} class="tick">
          {days[0]}
        </text>
        <text x={width} y={height + 15} class="tick" text-anchor="end">
          {days[days.length - 1]}
        </text>
      </svg>
      <figcaption>
        <span class="swatch bar-a" aria-hidden="true" /> {legend[0]} <span class="swatch bar-b" aria-hidden="true" /> {legend[1]}; highest day {num(max)}
      </figcaption>
      <table class="sr-only">
        <caption>{`${legend[0]} and ${legend[1]} per day`}</caption>
        <thead>
          <tr>
            <th scope="col">Day</th>
            <th scope="col">{legend[0]}</th>
            <th scope="col">{legend[1]}</th>
          </tr>
        </thead>
        <tbody>
          {series
            .filter((s) => s.values[0] + s.values[1] > 0)
            .map((s) => (
              <tr key={s.day}>
                <td>{s.day}</td>
                <td>{s.values[0]}</td>
                <td>{s.values[1]}</td>
              </tr>
            ))}
        </tbody>
      </table>
    </figure>
  );
}

function Breakdown({ entries, label, errors }: { entries: Entry[]; label: string; errors?: boolean }) {
  const metric = (e: Entry) => (errors ? e.invocations : e.prompt_tokens + e.completion_tokens);
  const max = Math.max(1, ...entries.map(metric));
  return (
    <div class="table-wrap">
      <table class="breakdown">
        <thead>
          <tr>
            <th scope="col">{label}</th>
            <th scope="col" class="num">
              Invocations
            </th>
            {errors ? null : (
              <>
                <th scope="col" class="num">
                  Tokens
                </th>
                <th scope="col" class="num">
                  Cache hits
                </th>
                <th scope="col" class="num">
                  Errors
                </th>
              </>
            )}
            <th scope="col">
              <span class="sr-only">Share</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {entries.map((e) => (
            <tr key={e.key}>
              <td>{errors ? <code>{e.key}</code> : <a href={href(['functions', e.key])}>{e.key}</a>}</td>
              <td class="num">{num(e.invocations)}</td>
              {errors ? null : (
                <>
                  <td class="num">{num(e.prompt_tokens + e.completion_tokens)}</td>
                  <td class="num">{percent(e.cache_hits, e.invocations)}</td>
                  <td class="num">{num(e.errors)}</td>
                </>
              )}
              <td class="share">
                <meter min={0} max={max} value={metric(e)} aria-label={`${e.key}: share`} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
