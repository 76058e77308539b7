// The product-description example as code: the same definition as
// functions/examples/product-description.json (a test keeps the two deep-equal). Fashion
// products go to the vertical model, everything else to the default one.
import { defineFunction } from '@genrt/sdk';

export default defineFunction<{ product: string; category: string; features?: string[] }>({
  name: 'product-description',
  route: {
    field: 'category',
    cases: { fashion: 'smollm2-135m:fashion' },
    default: 'smollm2-135m',
  },
  system: 'You write product descriptions for an online shop. Be accurate, warm and concise. Never invent prices.',
  prompt:
    'Write a two-sentence description of the {{ category }} product "{{ product }}".{% if features %} Mention: {{ features | join(\', \') }}.{% endif %}',
  input_schema: {
    type: 'object',
    properties: {
      product: { type: 'string', minLength: 1, maxLength: 200 },
      category: { type: 'string' },
      features: { type: 'array', items: { type: 'string' }, maxItems: 10 },
    },
    required: ['product', 'category'],
  },
  params: { max_tokens: 96, temperature: 0.7, top_p: 0.9 },
  cache: { ttl_s: 3600 },
  timeout_s: 30,
  idle_timeout_s: 600,
});
