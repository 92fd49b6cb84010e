"""The shell text ``dlas-host deploy`` runs on a device: the read-only probe, the agent's supervisor and
systemd unit, the stop script and the install command. Every configured value becomes one quoted shell (or
systemd) word here; ``deploy`` only decides what to run and when.
"""

from __future__ import annotations

import shlex

SERVICE = "dlas-agent"
ENGINES = ("podman", "docker")
SECRET_FILE = "agent.secret"  # in install_dir (0700): the agent's secret, hex, mode 0600


def _probe_script(install_dir: str, python: str) -> str:
    """Read-only: what the device is and what is deployed (every configured value is one quoted shell word)."""
    d = _remote_path(install_dir)
    return f"""
echo "arch=$(uname -m)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "os=$PRETTY_NAME"; else echo "os=$(uname -s)"; fi
echo "home=$HOME"
echo "python=$({_remote_path(python)} -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>/dev/null | sed 's/^/gpu=/'
fi
[ -r /etc/nv_tegra_release ] && echo "tegra=$(head -n1 /etc/nv_tegra_release)"
if command -v systemctl >/dev/null 2>&1 && timeout 5 systemctl --user show-environment >/dev/null 2>&1; then
  echo systemd_user=1
fi
for e in {" ".join(ENGINES)}; do command -v $e >/dev/null 2>&1 && echo "engine=$e"; done
[ -r {d}/deployed.json ] && echo "deployed=$(tr -d '\\n' < {d}/deployed.json)"
if [ -r {d}/supervisor.pid ] && kill -0 "$(cat {d}/supervisor.pid)" 2>/dev/null; then echo supervisor_alive=1; fi
true
"""


def _remote_path(path: str) -> str:
    """A shell word for a remote path (or command); a leading ~ becomes $HOME (expanded by the remote shell)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def supervisor_script(install_dir: str, port: int, threads: int) -> str:
    """POSIX sh supervisor: restarts the agent when it dies, bounded (gives up on a crash loop)."""
    return f"""#!/bin/sh
# dlas-agent supervisor (written by dlas-host deploy). Restarts the agent if it dies; gives up after
# 10 restarts within 5 minutes (crash loop) so a broken install does not spin forever.
D={_remote_path(install_dir)}
echo $$ > "$D/supervisor.pid"
child=""
stop() {{
  [ -n "$child" ] && kill -TERM -- "-$child" 2>/dev/null
  rm -f "$D/supervisor.pid" "$D/agent.pid"
  exit 0
}}
trap stop TERM INT HUP
window_start=$(date +%s)
restarts=0
while :; do
  TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1 setsid "$D/current/bin/python" -m dlas_agent serve \\
      --host 127.0.0.1 --port {port} --threads {threads} --secret-file "$D/{SECRET_FILE}" \\
      >> "$D/agent.log" 2>&1 < /dev/null &
  child=$!
  echo "$child" > "$D/agent.pid"
  wait "$child"
  code=$?
  kill -KILL -- "-$child" 2>/dev/null   # forked RPC session workers of the dead agent
  now=$(date +%s)
  echo "$(date -u +%FT%TZ) supervisor: agent $child exited with $code" >> "$D/agent.log"
  if [ $((now - window_start)) -gt 300 ]; then window_start=$now; restarts=0; fi
  restarts=$((restarts + 1))
  if [ $restarts -gt 10 ]; then
    echo "$(date -u +%FT%TZ) supervisor: crash loop, giving up" >> "$D/agent.log"
    rm -f "$D/supervisor.pid" "$D/agent.pid"
    exit 1
  fi
  sleep 1
done
"""


def systemd_unit(install_dir_abs: str, port: int, threads: int) -> str:
    python = _systemd_word(f"{install_dir_abs}/current/bin/python")
    secret = _systemd_word(f"{install_dir_abs}/{SECRET_FILE}")
    return f"""[Unit]
Description=DLAS Lab device agent (TVM runtime RPC on 127.0.0.1:{port})
After=network.target

[Service]
Environment=TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1
ExecStart={python} -m dlas_agent serve --host 127.0.0.1 --port {port} --threads {threads} --secret-file {secret}
Restart=always
RestartSec=2
StartLimitIntervalSec=300
StartLimitBurst=10
KillMode=control-group

[Install]
WantedBy=default.target
"""


def _systemd_word(value: str) -> str:
    """One word of a unit's command line: quoted, with systemd's specifier (%) and variable ($) signs escaped."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("%", "%%")
               .replace("$", "$$"))
    return f'"{escaped}"'


def stop_script(install_dir: str) -> str:
    d = _remote_path(install_dir)
    return f"""D={d}
for f in supervisor.pid agent.pid; do
  if [ -r "$D/$f" ]; then p=$(cat "$D/$f"); kill -TERM -- "-$p" 2>/dev/null; kill -TERM "$p" 2>/dev/null; fi
done
i=0
while [ $i -lt 50 ]; do
  alive=0
  for f in supervisor.pid agent.pid; do
    [ -r "$D/$f" ] && kill -0 "$(cat "$D/$f")" 2>/dev/null && alive=1
  done
  [ $alive -eq 0 ] && break
  i=$((i + 1)); sleep 0.2
done
for f in supervisor.pid agent.pid; do
  if [ -r "$D/$f" ]; then p=$(cat "$D/$f"); kill -KILL -- "-$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; fi
done
rm -f "$D/supervisor.pid" "$D/agent.pid"
if command -v systemctl >/dev/null 2>&1; then timeout 10 systemctl --user stop {SERVICE}.service >/dev/null 2>&1; fi
true
"""


def install_command(install_dir: str, python: str, venv_name: str, remove: list[str]) -> str:
    """Shell command: a fresh venv ``venvs/<venv_name>`` made by ``python``, the agent installed into it from
    the uploaded bundle (offline), then ``remove`` (paths inside the tvm package) deleted."""
    d = _remote_path(install_dir)
    venv = f"{d}/venvs/{shlex.quote(venv_name)}"
    rm_code = ("import importlib.util, os; t = importlib.util.find_spec('tvm').submodule_search_locations[0]; "
               f"[os.remove(os.path.join(t, r)) for r in {remove!r} if os.path.exists(os.path.join(t, r))]; "
               "print(t)")
    return (f"rm -rf {venv} && {_remote_path(python)} -m venv {venv} && "
            f"{venv}/bin/python -m pip install -q --no-index --find-links {d}/bundle --no-compile "
            f"--disable-pip-version-check dlas-agent && {venv}/bin/python -c {shlex.quote(rm_code)}")
