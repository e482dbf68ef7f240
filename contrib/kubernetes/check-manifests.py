#!/usr/bin/env python3
# Checks the manifests in this folder without a cluster or a schema: every
# document parses, the pieces name each other consistently, and the pgwicket.ini
# that render-peers.sh makes for each pod passes `pgwicket --check-config`.
# Usage: check-manifests.py PGWICKET_BIN [FOLDER]   (needs python3-yaml, openssl)
import glob
import os
import subprocess
import sys
import tempfile

import yaml


def fail(msg):
    sys.exit("check-manifests: " + msg)


def containers(pod_spec):
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def env_value(container, name):
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    fail(f"container {container['name']} has no {name}")


def main():
    if len(sys.argv) < 2:
        fail("usage: check-manifests.py PGWICKET_BIN [FOLDER]")
    binary = sys.argv[1]
    folder = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    docs = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                for key in ("apiVersion", "kind", "metadata"):
                    if key not in doc:
                        fail(f"{path}: a document without {key}")
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    print(f"{len(docs)} documents: " + ", ".join(f"{k}/{n}" for k, n in sorted(docs)))

    sts = [d for (k, _), d in docs.items() if k == "StatefulSet"]
    if len(sts) != 1:
        fail("expected one StatefulSet")
    sts = sts[0]
    pod = sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    if sts["spec"]["selector"]["matchLabels"].items() - labels.items():
        fail("the StatefulSet's selector does not match its pods")
    peers_svc = docs.get(("Service", sts["spec"]["serviceName"]))
    if not peers_svc or peers_svc["spec"].get("clusterIP") != "None":
        fail("serviceName must be a headless Service (clusterIP: None)")
    if not peers_svc["spec"].get("publishNotReadyAddresses"):
        fail("the headless Service must publish draining (not ready) pods: cancels still reach them")
    for (kind, name), d in docs.items():
        if kind == "Service" and d["spec"]["selector"].items() - labels.items():
            fail(f"Service {name} selects no pod of the StatefulSet")

    volumes = {v["name"]: v for v in pod["volumes"]}
    for v in volumes.values():
        if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in docs:
            fail(f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")
        if "secret" in v and ("Secret", v["secret"]["secretName"]) not in docs:
            fail(f"volume {v['name']}: no Secret {v['secret']['secretName']}")
    for c in containers(pod):
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                fail(f"container {c['name']} mounts an unknown volume {m['name']}")

    main_c = pod["containers"][0]
    if main_c["readinessProbe"]["httpGet"]["path"] != "/healthz":
        fail("readiness must ask /healthz")
    if main_c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz":
        fail("liveness on /healthz would restart a draining pod")
    if "preStop" not in main_c.get("lifecycle", {}):
        fail("no preStop hook: the pod would stop without draining")
    init = pod["initContainers"][0]
    replicas = sts["spec"]["replicas"]
    if int(env_value(init, "REPLICAS")) != replicas:
        fail(f"REPLICAS ({env_value(init, 'REPLICAS')}) is not the StatefulSet's replicas ({replicas})")
    if env_value(init, "PEER_SERVICE") != sts["spec"]["serviceName"]:
        fail("PEER_SERVICE is not the StatefulSet's serviceName")

    cm = [d for (k, _), d in docs.items() if k == "ConfigMap"][0]
    with tempfile.TemporaryDirectory() as tmp:
        # The pods' paths (/etc/pgwicket/...) moved under tmp, with stand-ins for the
        # Secrets' placeholders: a real verifier and a self-signed key pair.
        template = cm["data"]["pgwicket.ini"].replace("/etc/pgwicket/", tmp + "/")
        with open(os.path.join(tmp, "pgwicket.ini.in"), "w") as f:
            f.write(template)
        with open(os.path.join(tmp, "render-peers.sh"), "w") as f:
            f.write(cm["data"]["render-peers.sh"])
        os.makedirs(os.path.join(tmp, "auth"))
        os.makedirs(os.path.join(tmp, "tls"))
        line = subprocess.run([binary, "--hash-password", "app"], input="stand-in\n", capture_output=True,
                              text=True, check=True).stdout
        with open(os.path.join(tmp, "auth", "userlist.txt"), "w") as f:
            f.write(line)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-subj", "/CN=pgwicket", "-days", "1",
                        "-keyout", os.path.join(tmp, "tls", "tls.key"), "-out", os.path.join(tmp, "tls", "tls.crt")],
                       check=True, capture_output=True)
        for ordinal in range(replicas):
            out = os.path.join(tmp, f"pgwicket-{ordinal}.ini")
            env = dict(os.environ, POD_NAME=f"{sts['metadata']['name']}-{ordinal}", NAMESPACE="default",
                       REPLICAS=str(replicas), PEER_SERVICE=sts["spec"]["serviceName"])
            subprocess.run(["sh", os.path.join(tmp, "render-peers.sh"), os.path.join(tmp, "pgwicket.ini.in"), out],
                           env=env, check=True)
            text = open(out).read()
            if "@" in text or f"peer_id = {ordinal + 1}\n" not in text:
                fail(f"pod {ordinal}: render-peers.sh left a placeholder or set no peer_id:\n{text}")
            r = subprocess.run([binary, "--check-config", "-c", out], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"pod {ordinal}: pgwicket --check-config failed:\n{r.stdout}{r.stderr}\n{text}")
            print(f"pod {ordinal}: peer_id {ordinal + 1}, {replicas - 1} peers: configuration is valid")


if __name__ == "__main__":
    main()
