//! The prepared function and its activity, and the pure decision of how to run one input:
//! render, resolve parameters, check the context, and build the cache key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_functions::{ModelId, PreparedFunction, RenderedPrompt, SamplingParams};

use crate::engine::AdapterSet;
use crate::{CacheKey, DeployedFunction, Invocation, InvokeError};

pub(crate) struct FunctionState {
    pub(crate) function: DeployedFunction,
    prepared: Arc<PreparedFunction>,
    in_flight: u32,
    last_activity: Instant,
}

/// How to run one invocation.
#[derive(Debug)]
pub(crate) struct Plan {
    pub prompt: RenderedPrompt,
    pub params: SamplingParams,
    /// The LoRA adapters to run with.
    pub adapters: AdapterSet,
    /// Present when the result may be served from, and stored in, the response cache.
    pub cache_key: Option<CacheKey>,
    pub cache_ttl: Option<Duration>,
}

/// What an idle check concluded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Idleness {
    Expired,
    CheckAgainIn(Duration),
}

impl FunctionState {
    pub(crate) fn new(function: DeployedFunction, now: Instant) -> Result<Self, InvokeError> {
        // The spec was validated at deploy time; failing here means the stored spec is bad.
        let prepared = PreparedFunction::new(function.spec.clone())
            .map_err(|e| InvokeError::Internal(format!("stored spec does not compile: {e}")))?;
        Ok(Self {
            function,
            prepared: Arc::new(prepared),
            in_flight: 0,
            last_activity: now,
        })
    }

    pub(crate) fn prepared(&self) -> Arc<PreparedFunction> {
        Arc::clone(&self.prepared)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.function.spec.idle_timeout_s))
    }

    pub(crate) fn plan(
        &self,
        invocation: &Invocation,
        model: &ModelId,
        adapters: &AdapterSet,
        n_ctx: u32,
    ) -> Result<Plan, InvokeError> {
        invocation.params.validate_override()?;
        let spec = &self.function.spec;
        let params = spec.params.resolve(&invocation.params);
        if params.max_tokens >= n_ctx {
            return Err(InvokeError::MaxTokensExceedContext {
                model: model.clone(),
                max_tokens: params.max_tokens,
                n_ctx,
            });
        }
        let prompt = match &invocation.prompt {
            Some(prompt) => (**prompt).clone(),
            None => {
                let prompt = self.prepared.render(&invocation.input)?;
                match &invocation.conversation {
                    Some(conversation) => conversation.wrap(prompt),
                    None => prompt,
                }
            }
        };
        let cacheable = spec
            .cache
            .enabled
            .unwrap_or_else(|| params.is_deterministic());
        let cache_key = cacheable.then(|| {
            // The adapters by file and scale: another adapter, or the same name registered
            // again with another file, is another answer.
            let served = match adapters.is_empty() {
                true => model.clone(),
                false => {
                    let files: Vec<String> = adapters
                        .specs()
                        .iter()
                        .map(|a| format!("{}*{}", a.sha256, a.scale))
                        .collect();
                    ModelId::new(format!("{model}:{}", files.join("+")))
                }
            };
            CacheKey::new(
                &self.function.tenant,
                self.function.name.as_str(),
                self.function.version,
                &served,
                &prompt,
                &params,
            )
        });
        Ok(Plan {
            prompt,
            params,
            adapters: adapters.clone(),
            cache_key,
            cache_ttl: spec.cache.ttl_s.map(Duration::from_secs),
        })
    }

    pub(crate) fn started(&mut self, now: Instant) {
        self.in_flight += 1;
        self.last_activity = now;
    }

    pub(crate) fn touched(&mut self, now: Instant) {
        self.last_activity = now;
    }

    pub(crate) fn finished(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.last_activity = now;
    }

    pub(crate) fn idleness(&self, now: Instant) -> Idleness {
        let quiet = now.duration_since(self.last_activity);
        let timeout = self.idle_timeout();
        if self.in_flight == 0 && quiet >= timeout {
            Idleness::Expired
        } else {
            Idleness::CheckAgainIn(
                timeout
                    .saturating_sub(quiet)
                    .max(Duration::from_millis(100)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genrt_functions::{FunctionName, GenerationParams, TenantId};
    use serde_json::json;
    use std::sync::Arc;

    fn state(spec: serde_json::Value) -> FunctionState {
        let function = DeployedFunction {
            tenant: TenantId::parse("acme").unwrap(),
            name: FunctionName::parse("f").unwrap(),
            version: 1,
            spec: serde_json::from_value(spec).unwrap(),
            digest: String::new(),
        };
        FunctionState::new(function, Instant::now()).unwrap()
    }

    fn invocation(
        state: &FunctionState,
        input: serde_json::Value,
        params: GenerationParams,
    ) -> Invocation {
        Invocation {
            id: crate::InvocationId::new(),
            function: Arc::new(state.function.clone()),
            input,
            params,
            received_at: Instant::now(),
            priority: crate::Priority::Interactive,
            stream: None,
            fault: None,
            conversation: None,
            prompt: None,
        }
    }

    #[test]
    fn deterministic_invocations_get_a_cache_key_and_sampled_ones_do_not() {
        let s =
            state(json!({"model": "m", "prompt": "Hi {{ n }}", "params": {"temperature": 0.7}}));
        let m = ModelId::new("m");
        let sampled = s
            .plan(
                &invocation(&s, json!({"n": 1}), GenerationParams::default()),
                &m,
                &AdapterSet::default(),
                2048,
            )
            .unwrap();
        assert!(sampled.cache_key.is_none());
        let greedy = GenerationParams {
            temperature: Some(0.0),
            ..Default::default()
        };
        let plan = s
            .plan(
                &invocation(&s, json!({"n": 1}), greedy),
                &m,
                &AdapterSet::default(),
                2048,
            )
            .unwrap();
        assert!(plan.cache_key.is_some());
        assert_eq!(plan.prompt.user, "Hi 1");
    }

    #[test]
    fn a_function_can_opt_out_of_or_into_caching() {
        let m = ModelId::new("m");
        let greedy = || GenerationParams {
            temperature: Some(0.0),
            ..Default::default()
        };
        let never = state(json!({"model": "m", "prompt": "x", "cache": {"enabled": false}}));
        assert!(never
            .plan(
                &invocation(&never, json!({}), greedy()),
                &m,
                &AdapterSet::default(),
                2048
            )
            .unwrap()
            .cache_key
            .is_none());
        let always =
            state(json!({"model": "m", "prompt": "x", "cache": {"enabled": true, "ttl_s": 5}}));
        let plan = always
            .plan(
                &invocation(&always, json!({}), GenerationParams::default()),
                &m,
                &AdapterSet::default(),
                2048,
            )
            .unwrap();
        assert!(plan.cache_key.is_some());
        assert_eq!(plan.cache_ttl, Some(Duration::from_secs(5)));
    }

    #[test]
    fn max_tokens_beyond_the_context_is_refused_before_any_work() {
        let s = state(json!({"model": "m", "prompt": "x"}));
        let big = GenerationParams {
            max_tokens: Some(4096),
            ..Default::default()
        };
        let err = s
            .plan(
                &invocation(&s, json!({}), big),
                &ModelId::new("m"),
                &AdapterSet::default(),
                2048,
            )
            .unwrap_err();
        assert!(matches!(
            err,
            InvokeError::MaxTokensExceedContext { n_ctx: 2048, .. }
        ));
    }

    #[test]
    fn idleness_waits_for_in_flight_work_and_the_timeout() {
        let mut s = state(json!({"model": "m", "prompt": "x", "idle_timeout_s": 10}));
        let t0 = Instant::now();
        s.started(t0);
        assert!(matches!(
            s.idleness(t0 + Duration::from_secs(60)),
            Idleness::CheckAgainIn(_)
        ));
        s.finished(t0 + Duration::from_secs(1));
        assert_eq!(
            s.idleness(t0 + Duration::from_secs(5)),
            Idleness::CheckAgainIn(Duration::from_secs(6))
        );
        assert_eq!(s.idleness(t0 + Duration::from_secs(11)), Idleness::Expired);
    }
}
