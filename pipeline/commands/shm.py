"""``run.py shm ls|clean``: list hftfarm shared-memory segments and remove those of dead instances.

Runs in the operator's shell; cold path. An instance counts as running while a controller holds
its machine-wide claim (shm/segment.py: claim_instance) or any of its segments names a creator
pid that is still alive (the controller, or the stage that made a histogram). ``clean`` never
touches a running instance unless told ``--force``, because
unlinking a live ring's name does not stop the processes mapped to it, but a restarted stage
would then attach to a fresh, empty segment while its peers keep the old one.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("shm", help="list or clean hftfarm shared-memory segments (/dev/shm)")
    ssub = p.add_subparsers(dest="shm_cmd", metavar="<ls|clean>")
    ssub.required = True
    ls = ssub.add_parser("ls", help="list segments: name, instance, kind, size, creator pid, "
                                    "whether the instance still runs")
    ls.add_argument("--instance", default=None, help="only this instance")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=run_ls)
    clean = ssub.add_parser("clean", help="remove the segments of instances that no longer run")
    clean.add_argument("--instance", default=None, help="only this instance")
    clean.add_argument("--force", action="store_true",
                       help="also remove the segments of a running instance")
    clean.set_defaults(func=run_clean)


def _by_instance(instance):
    from shm.segment import list_segments

    groups: dict[str, list] = {}
    for info in list_segments(instance):
        groups.setdefault(info.instance, []).append(info)
    return groups


def _running_pids(infos) -> list[int]:
    """Pids that keep an instance alive: its controller's claim on the name (machine-wide,
    dropped by the kernel when the controller dies) and any live segment creator."""
    from shm.segment import claim_holder

    pids = {i.creator_pid for i in infos if i.alive}
    holder = claim_holder(infos[0].instance) if infos else None
    if holder is not None:   # (-1: held, but the owner record is unreadable)
        pids.add(holder["pid"] if isinstance(holder.get("pid"), int) else -1)
    return sorted(pids)


def run_ls(args) -> int:
    groups = _by_instance(args.instance)
    rows = []
    for inst in sorted(groups):
        running = bool(_running_pids(groups[inst]))
        for info in groups[inst]:
            rows.append({**info.as_dict(), "instance_running": running})
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        where = f" for instance {args.instance!r}" if args.instance else ""
        print(f"no hftfarm segments in /dev/shm{where}")
        return 0
    head = ("NAME", "INSTANCE", "KIND", "SIZE", "CREATOR", "INSTANCE")
    sub = ("", "", "", "bytes", "pid", "state")
    table = [head, sub] + [
        (r["name"], r["instance"], r["kind"], str(r["size"]), str(r["creator_pid"] or "-"),
         "running" if r["instance_running"] else "dead") for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    for row in table:
        print("  ".join(cell.rjust(w) if c in (3, 4) else cell.ljust(w)
                        for c, (cell, w) in enumerate(zip(row, widths))).rstrip())
    return 0


def run_clean(args) -> int:
    from pipeline.exits import CliError
    from shm.segment import unlink_instance

    groups = _by_instance(args.instance)
    if args.instance and not groups:
        print(f"no segments for instance {args.instance!r}: nothing to clean")
        return 0
    refused = []
    for inst in sorted(groups):
        pids = _running_pids(groups[inst])
        if pids and not args.force:
            refused.append((inst, pids))
            continue
        removed = unlink_instance(inst)
        state = f"running (pids {', '.join(map(str, pids))}), forced" if pids else "dead"
        print(f"instance {inst} ({state}): removed {len(removed)} segment(s)")
        for name in removed:
            print(f"  /dev/shm/{name}")
    for inst, pids in refused:
        msg = (f"instance {inst!r} is still running (creator pid {', '.join(map(str, pids))}); "
               f"stop it first (`python run.py stop`) or pass --force to remove its segments")
        if args.instance:
            raise CliError(msg, 1)
        print(f"kept: {msg}")
    return 0
