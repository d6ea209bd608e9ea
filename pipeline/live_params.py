"""Live parameters, the controller's side of ``run.py set NAME key=value ...``. Cold path: runs
in the controller process, inside a control-socket request (under the controller's lock).

A ``{"cmd": "set", "strategy": NAME, "params": {...}, "who": ..., "why": ...}`` request:

1. NAME must be a running ``[[strategies]]`` entry (else exit 2, naming the running ones);
2. the overrides are applied to the strategy's *current* parameters (the config's, or the last
   set's) and validated exactly as the config is, ``Strategy.updated_params`` (every problem
   at once, each naming ``strategies[<n>].params.<key>`` and the value; exit 2), and packed
   once (``kernel_params``) so a set that cannot reach the hooks is refused here too. Nothing
   has changed when any of this fails;
3. the new full set is written to ``<run dir>/params/<NAME>.json`` (stages/live_params.py:
   0600, write + rename) with the next version number;
4. every process of the strategy (each stage of the topology that hosts NAME) gets CTRL_PARAMS
   with that version; each applies it between two batches and answers on its control ack word
   (a negated ack: it refused the set). A process that is down or restarting reads the file
   when it starts;
5. the set is journaled (journal/events.jsonl: ``params_set`` with who, why, the strategy, the
   old and new values, the version, who acknowledged) and shown by ``status`` (per strategy:
   the version and the values that differ from the config).
"""
from __future__ import annotations

import time

from pipeline.exits import EXIT_USAGE

ACK_WAIT_S = 1.0   # as long as a kill waits for its acknowledgements


class SetRefused(Exception):
    """A ``set`` that changes nothing: the message for the operator and run.py's exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


class LiveParams:
    """The controller's record of the parameter sets of one run: per strategy name, the
    strategy object (cold: validation and packing only; built on first use) holding its current
    parameters, the config's parameters and the version of the last set (0: the config's)."""

    def __init__(self, cfg, topology, run_dir):
        self.cfg = cfg
        self.topology = topology
        self.run_dir = run_dir
        self.versions: dict[str, int] = {}
        self.last_set: dict[str, dict] = {}
        # farm coordinator: per strategy, shard -> {key: value} on top of the strategy's set
        self.shard_overrides: dict[str, dict[int, dict]] = {}
        self._strategies: dict = {}
        self._config_params: dict = {}

    def names(self) -> list[str]:
        """The running strategies' names (one per ``[[strategies]]`` entry that is enabled)."""
        return list(dict.fromkeys(s.strategy.name for s in self.topology.strategies()))

    def processes(self, name: str) -> list:
        """The stages that host strategy ``name``: every one of them gets each new set."""
        return [s for s in self.topology.strategies() if s.strategy.name == name]

    def check_name(self, name) -> None:
        if isinstance(name, str) and name in self.names():
            return
        disabled = [s.name for s in self.cfg.strategies if not s.enabled]
        hint = (f"; {name!r} is configured with enabled = false, so it does not run"
                if name in disabled else "")
        raise SetRefused(f"unknown strategy {name!r}: the running strategies are "
                         f"{', '.join(self.names()) or 'none'}{hint}")

    def strategy(self, name: str):
        """The cold strategy object of ``name`` with its current parameters."""
        if name not in self._strategies:
            from shm.instruments import InstrumentTable
            from strategies.registry import make_strategy

            spec = self.processes(name)[0]
            sc = spec.strategy
            table = InstrumentTable.from_config(self.cfg)
            obj = make_strategy(sc.kind, sc.params, [table.by_key(k) for k in spec.instruments],
                                spec.strategy_id, spec.shard)   # shard 0 validates for all
            self._config_params[name] = obj.params
            self._strategies[name] = obj
        return self._strategies[name]

    def validate(self, name, overrides):
        """(strategy, new Params): ``overrides`` applied to ``name``'s current parameters,
        validated as the config is and packed once. SetRefused (exit 2) when anything is
        wrong; nothing is changed either way."""
        from common.schema import ConfigError
        from stages.live_params import config_params_path

        self.check_name(name)
        if not isinstance(overrides, dict) or not overrides:
            raise SetRefused("no parameters given: name at least one as key=value")
        bad_keys = [k for k in overrides if not isinstance(k, str) or not k]
        if bad_keys:
            raise SetRefused(f"parameter names must be non-empty strings, got {bad_keys!r}")
        strategy = self.strategy(name)
        where = config_params_path(self.cfg, name)
        try:
            new = strategy.updated_params(overrides, where)
        except ConfigError as exc:
            raise SetRefused(f"invalid parameters for {name} (nothing changed):\n  "
                             + "\n  ".join(exc.problems)) from None
        try:
            packed = strategy.kernel_params(new)
        except (ValueError, OverflowError, TypeError, ArithmeticError) as exc:
            raise SetRefused(f"invalid parameters for {name} (nothing changed): {where}: "
                             f"cannot be packed for the strategy's hooks: {exc}") from None
        if packed.dtype != strategy.kernel_params().dtype:
            raise SetRefused(f"invalid parameters for {name} (nothing changed): {where}: the "
                             "new values pack into another record layout than the running "
                             "one (derive() depends on them)")
        self.check_shards(name, strategy, new, where)
        return strategy, new

    def check_shards(self, name: str, strategy, new, where: str) -> None:
        """A farm's shards run the new set with the coordinator's per-shard values on top:
        each of those sets must be valid too (else that shard would refuse it, and refuse to
        start on it after a restart). SetRefused naming the shard; nothing changed."""
        from common.schema import ConfigError
        from stages.live_params import params_dict

        base = params_dict(new)
        for shard, ov in sorted(self.shard_overrides.get(name, {}).items()):
            try:
                strategy.updated_params({**base, **ov}, where)
            except ConfigError as exc:
                raise SetRefused(f"invalid parameters for {name} (nothing changed): with the "
                                 f"farm coordinator's values for shard {shard} ("
                                 + ", ".join(f"{k} = {v!r}" for k, v in ov.items()) + "):\n  "
                                 + "\n  ".join(exc.problems)) from None

    def commit(self, name: str, new, who: str, why: str) -> tuple[int, dict, str]:
        """Write the new full set (the next version) and make it the current one. Returns
        (version, {key: [old, new]} of what changed, the file). OSError: nothing changed."""
        from stages.live_params import changed_values, params_dict, write_param_set

        strategy = self.strategy(name)
        version = self.versions.get(name, 0) + 1
        path = write_param_set(self.run_dir, name, version, params_dict(new), who, why,
                               shards=self.shard_overrides.get(name))
        changed = changed_values(strategy.params, new)
        strategy.params = new
        self.versions[name] = version
        self.last_set[name] = {"who": who, "why": why, "at": time.strftime("%H:%M:%S")}
        return version, changed, str(path)

    def commit_shards(self, name: str, overrides: dict, who: str, why: str) -> tuple[int, str]:
        """Per-shard values (``{shard: {key: value}}``, the farm coordinator's) on top of the
        strategy's current set: each shard's whole set is validated as the config is (SetRefused,
        nothing changed, when one is not), then written as the next version. Returns
        (version, file)."""
        from common.schema import ConfigError
        from stages.live_params import config_params_path, params_dict, write_param_set

        self.check_name(name)
        strategy = self.strategy(name)
        base = params_dict(strategy.params)
        where = config_params_path(self.cfg, name)
        for shard, ov in overrides.items():
            try:
                strategy.kernel_params(strategy.updated_params({**base, **ov}, where))
            except ConfigError as exc:
                raise SetRefused(f"shard {shard} of {name} (nothing changed):\n  "
                                 + "\n  ".join(exc.problems)) from None
        version = self.versions.get(name, 0) + 1
        merged = {int(k): dict(v) for k, v in self.shard_overrides.get(name, {}).items()}
        for shard, ov in overrides.items():
            merged.setdefault(int(shard), {}).update(ov)
        try:
            path = write_param_set(self.run_dir, name, version, base, who, why, shards=merged)
        except OSError as exc:
            raise SetRefused(f"could not write the parameter set of {name}: {exc}",
                             exit_code=1) from None
        self.shard_overrides[name] = merged
        self.versions[name] = version
        return version, str(path)

    def view(self) -> dict:
        """Per running strategy: the version of its parameter set (0: the config's) and every
        value that differs from the config ({key: {"config": ..., "now": ...}})."""
        from stages.live_params import changed_values

        out = {}
        for name in self.names():
            version = self.versions.get(name, 0)
            entry = {"version": version, "changed": {}}
            if version:
                diff = changed_values(self._config_params[name], self.strategy(name).params)
                entry["changed"] = {k: {"config": a, "now": b} for k, (a, b) in diff.items()}
                entry.update(self.last_set.get(name, {}))
            if self.shard_overrides.get(name):
                entry["shards"] = {str(k): v for k, v in self.shard_overrides[name].items()}
            out[name] = entry
        return out


def handle_set(ctl, req: dict) -> dict:
    """The ``set`` request (module docstring). Replies ``ok`` with the version, what changed,
    and which processes acknowledged, refused or did not answer; or ``ok: false`` with the
    message and ``exit_code`` (2: a bad name or value, 1: the set could not be written)."""
    lp = ctl.live_params
    name = req.get("strategy")
    who = str(req.get("who") or "cli")[:32]
    why = str(req.get("why") or "")[:200]
    overrides = req.get("params")
    try:
        strategy, new = lp.validate(name, overrides)
        old = {k: getattr(strategy.params, k) for k in overrides}
        try:
            version, changed, path = lp.commit(name, new, who, why)
        except OSError as exc:
            raise SetRefused(f"could not write the parameter set of {name} (nothing changed): "
                             f"{exc}", exit_code=1) from None
    except SetRefused as exc:
        return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
    acked, failed, not_acked = send_params(ctl, name, version)
    new_values = {k: getattr(new, k) for k in overrides}
    summary = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()) or "no change"
    ctl.events.append(f"{time.strftime('%H:%M:%S')} {name} parameters v{version} ({summary}) "
                      f"by {who}")
    ctl.log(f"strategy {name}: parameter set {version} ({summary}) by {who}"
            + (f" ({why})" if why else "") + f"; applied by {', '.join(acked) or 'none'}"
            + (f"; refused by {', '.join(failed)}" if failed else "")
            + (f"; not answered: {', '.join(not_acked)}" if not_acked else ""))
    ctl.event("params_set", why, who=who, strategy=name, version=version, old=old,
              new=new_values, changed=changed, file=path, acked_by=acked, failed=failed,
              not_acked=not_acked)
    return {"ok": True, "strategy": name, "version": version, "changed": changed,
            "old": old, "new": new_values, "file": path, "acked": acked, "failed": failed,
            "not_acked": not_acked}


def send_params(ctl, name: str, version: int, wait_s: float = ACK_WAIT_S):
    """CTRL_PARAMS with ``version`` to every live process of strategy ``name``; waits up to
    ``wait_s`` for the running ones. Returns (acked, failed, not answered) stage names.

    Every live process gets the command, a starting one too (it may have read the file before
    this set was written; the command is then waiting for it after its start). Only running
    ones are waited for: this runs under the controller's lock, which a kill waits on."""
    from shm.records import CTRL_PARAMS

    lp = ctl.live_params
    seqs = {}
    for spec in lp.processes(name):
        if spec.name in ctl.supervisor.procs and ctl.send(spec.name, CTRL_PARAMS, version) \
                and ctl.alive(spec.name):
            seqs[spec.name] = ctl.ctl_seq
    acked, failed = ctl.await_answers(seqs, wait_s=wait_s)
    not_acked = [s.name for s in lp.processes(name) if s.name not in acked + failed]
    return acked, failed, not_acked
