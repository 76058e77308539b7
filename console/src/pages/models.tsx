import { client, unwrap } from '../api';
import { ErrorBox, Loading, Section, bytes, ms, num, percent, useResource, when } from '../ui';

/** Every model this credential may see, refreshed every two seconds. */
export function Models() {
  const models = useResource(() => unwrap(client.GET('/v1/models')), 'models', 2000);
  const list = models.data?.models ?? [];
  return (
    <Section title="Models">
      <p class="muted">Live: refreshed every 2 seconds.</p>
      <ErrorBox error={models.error} />
      {models.loading && !models.data ? <Loading what="models" /> : null}
      {models.data && list.length === 0 ? <p>No models.</p> : null}
      <div class="cards">
        {list.map((m) => (
          <article class="card" key={m.id} data-model={m.id} aria-labelledby={`model-${m.id}`}>
            <h3 id={`model-${m.id}`}>
              {m.id} <span class={`badge badge-${m.state}`}>{m.state}</span>
            </h3>
            <dl class="facts">
              <dt>Replicas</dt>
              <dd>
                {m.replicas} running ({m.min_replicas}–{m.max_replicas}), {m.busy_replicas} busy
              </dd>
              <dt>Busy slots</dt>
              <dd>
                <span data-testid="busy-slots">{m.busy_slots}</span> of {m.replicas * m.slots_per_replica}
              </dd>
              <dt>Queued</dt>
              <dd>
                <span data-testid="queued">{m.queued}</span> (background {m.background_queued})
              </dd>
              <dt>Memory</dt>
              <dd>
                {bytes(m.memory_bytes)}
                {m.gpu_memory_bytes ? `, GPU ${bytes(m.gpu_memory_bytes)}` : ''}
              </dd>
              <dt>Device</dt>
              <dd>
                {m.device}
                {m.gpu_layers !== undefined && m.gpu_layers !== null ? `, ${m.gpu_layers} layers offloaded` : ''}
              </dd>
              <dt>Context</dt>
              <dd>{num(m.n_ctx)} tokens per replica</dd>
              <dt>Loads</dt>
              <dd>
                {m.loads} (last {ms(m.last_load_ms)}), {m.replica_restarts} restarts
              </dd>
              <dt>Prefix cache</dt>
              <dd>
                {percent(m.prefix_cache.hits, m.prefix_cache.lookups)} of lookups hit,{' '}
                {percent(m.prefix_cache.cached_tokens, m.prefix_cache.prompt_tokens)} of prompt tokens reused
              </dd>
              <dt>Adapters</dt>
              <dd>
                {m.adapters_loaded} loaded ({bytes(m.adapter_memory_bytes)})
              </dd>
              {m.last_scaling ? (
                <>
                  <dt>Last scaling</dt>
                  <dd>
                    {m.last_scaling.from} → {m.last_scaling.to} ({m.last_scaling.reason}), {when(m.last_scaling.at)}
                  </dd>
                </>
              ) : null}
              {m.error ? (
                <>
                  <dt>Error</dt>
                  <dd class="error-text">{m.error}</dd>
                </>
              ) : null}
            </dl>
          </article>
        ))}
      </div>
    </Section>
  );
}
