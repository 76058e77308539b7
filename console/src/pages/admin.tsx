import { useState } from 'preact/hooks';
import { ApiError, client, unwrap, type Schemas } from '../api';
import { ErrorBox, Loading, Section, num, useResource, when } from '../ui';

type Tenant = Schemas['TenantInfo'];

const LIMITS: { key: keyof Schemas['TenantLimitsBody']; label: string; hint: string }[] = [
  { key: 'monthly_token_budget', label: 'Monthly token budget', hint: '0: no budget' },
  { key: 'max_concurrency', label: 'Concurrent invocations', hint: '0: no cap' },
  { key: 'rate_limit_rps', label: 'Requests per second', hint: '0: no limit' },
  { key: 'rate_limit_burst', label: 'Burst', hint: 'requests above the rate at once' },
  { key: 'max_private_models', label: 'Private models', hint: '0: none' },
  { key: 'max_private_model_mb', label: 'Private models, MiB', hint: '0: no cap' },
  { key: 'max_adapters', label: 'LoRA adapters', hint: '0: none' },
  { key: 'max_adapter_mb', label: 'Adapters, MiB', hint: '0: no cap' },
];

/** Tenants and their limits; for a credential with the `admin` scope. */
export function Admin() {
  const tenants = useResource(() => unwrap(client.GET('/v1/admin/tenants')), 'tenants');
  const [open, setOpen] = useState<string | undefined>();
  return (
    <Section title="Tenants">
      <ErrorBox error={tenants.error} />
      {tenants.loading && !tenants.data ? <Loading what="tenants" /> : null}
      {tenants.data ? (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Tenant</th>
                <th scope="col">State</th>
                <th scope="col" class="num">
                  Monthly budget
                </th>
                <th scope="col" class="num">
                  Concurrency
                </th>
                <th scope="col">Models allowed</th>
                <th scope="col">Created</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {tenants.data.tenants.map((t) => (
                <tr key={t.id}>
                  <th scope="row">{t.id}</th>
                  <td>{t.disabled ? <span class="badge badge-failed">disabled</span> : <span class="badge badge-succeeded">active</span>}</td>
                  <td class="num">{t.monthly_token_budget ? num(t.monthly_token_budget) : 'none'}</td>
                  <td class="num">{t.max_concurrency ? num(t.max_concurrency) : 'no cap'}</td>
                  <td>{t.allowed_models?.length ? t.allowed_models.join(', ') : 'all'}</td>
                  <td>{when(t.created_at)}</td>
                  <td>
                    <button type="button" class="secondary small" aria-expanded={open === t.id} onClick={() => setOpen(open === t.id ? undefined : t.id)}>
                      Edit<span class="sr-only"> {t.id}</span>
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      {open && tenants.data ? (
        <TenantEditor
          key={open}
          tenant={tenants.data.tenants.find((t) => t.id === open)!}
          onSaved={() => {
            tenants.reload();
          }}
        />
      ) : null}
    </Section>
  );
}

function TenantEditor({ tenant, onSaved }: { tenant: Tenant; onSaved: () => void }) {
  const [values, setValues] = useState<Record<string, string>>(() =>
    Object.fromEntries(LIMITS.map((l) => [l.key, tenant[l.key] === undefined || tenant[l.key] === null ? '' : String(tenant[l.key])])),
  );
  const [models, setModels] = useState(tenant.allowed_models?.join(', ') ?? '');
  const [error, setError] = useState<ApiError | undefined>();
  const [message, setMessage] = useState('');

  async function patch(body: Schemas['UpdateTenant'], done: string) {
    try {
      await unwrap(client.PATCH('/v1/admin/tenants/{id}', { params: { path: { id: tenant.id } }, body }));
      setError(undefined);
      setMessage(done);
      onSaved();
    } catch (err) {
      if (err instanceof ApiError) setError(err);
    }
  }

  function save(e: Event) {
    e.preventDefault();
    const body: Record<string, unknown> = {};
    for (const l of LIMITS) if (values[l.key] !== '') body[l.key] = Number(values[l.key]);
    const list = models
      .split(',')
      .map((m) => m.trim())
      .filter(Boolean);
    body.allowed_models = list.length ? list : null;
    patch(body as Schemas['UpdateTenant'], `Saved the limits of ${tenant.id}.`);
  }

  return (
    <section class="card" aria-label={`Edit tenant ${tenant.id}`}>
      <h3>Tenant {tenant.id}</h3>
      <form onSubmit={save} class="grid-form">
        {LIMITS.map((l) => (
          <label key={l.key}>
            {l.label} <span class="muted">({l.hint})</span>
            <input type="number" min="0" step="any" value={values[l.key]} onInput={(e) => setValues((v) => ({ ...v, [l.key]: (e.target as HTMLInputElement).value }))} />
          </label>
        ))}
        <label>
          Models allowed <span class="muted">(comma-separated; empty: all)</span>
          <input type="text" value={models} onInput={(e) => setModels((e.target as HTMLInputElement).value)} />
        </label>
        <div class="row">
          <button type="submit">Save limits</button>
          <button
            type="button"
            class={tenant.disabled ? 'secondary' : 'danger'}
            onClick={() => patch({ disabled: !tenant.disabled }, tenant.disabled ? `Enabled ${tenant.id}.` : `Disabled ${tenant.id}: its credentials are refused.`)}
          >
            {tenant.disabled ? 'Enable tenant' : 'Disable tenant'}
          </button>
        </div>
      </form>
      <ErrorBox error={error} />
      {message ? <p role="status">{message}</p> : null}
    </section>
  );
}
