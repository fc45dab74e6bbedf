"""Turns a benches/e2e.sh run directory into a Markdown report (stdout)."""
import json
import os
import platform
import re
import subprocess
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def gnu_time(path):
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["peak_rss_mb"] = int(m.group(1)) / 1024
    for key, name in (("User time (seconds)", "user_s"), ("System time (seconds)", "sys_s")):
        m = re.search(re.escape(key) + r": ([\d.]+)", text)
        if m:
            out[name] = float(m.group(1))
    m = re.search(r"Percent of CPU this job got: (\d+)%", text)
    if m:
        out["cpu_pct"] = int(m.group(1))
    return out


def rss_samples(path):
    try:
        return [int(x) / 1024 for x in open(path).read().split() if x.isdigit()]
    except OSError:
        return []


def eddy_run(runs, name):
    s = load(os.path.join(runs, name, "summary.json"))
    if not s:
        return None
    r = {"name": name, "summary": s, "bench": load(os.path.join(runs, name, "bench.json")) or {}}
    r.update(gnu_time(os.path.join(runs, name + ".time")))
    r["rss"] = rss_samples(os.path.join(runs, name + ".rss"))
    wall = s["wall_time_s"]
    r["readings_per_s"] = s["valid"] / wall
    r["lines_per_s"] = s["lines"] / wall
    r["mb_per_s"] = s["bytes"] / 1e6 / wall
    return r


def fmt(x, d=0):
    return f"{x:,.{d}f}"


def main():
    runs = sys.argv[1]
    cpu = ""
    try:
        cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
    except (OSError, IndexError):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# eddy end-to-end bench, {os.path.basename(runs)}\n")
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {cpu}; commit {commit}"
          f" (plus uncommitted changes, if any)\n")

    rows = [eddy_run(runs, n) for n in
            ("w1", "w2", "w1-stages", "w2-stages", "w1-pipeline", "w2-pipeline", "w2-windows", "w2-after-spark",
             "w2-windows-after-spark",
             "paced", "million", "million-steady")]
    rows = [r for r in rows if r]
    print("| run | lines | valid readings | wall s | readings/s | MB/s | CPU % | peak RSS MB |")
    print("|-----|-------|----------------|--------|------------|------|-------|-------------|")
    for r in rows:
        s = r["summary"]
        print(f"| {r['name']} (-w {s['workers']}) | {fmt(s['lines'])} | {fmt(s['valid'])} | {s['wall_time_s']:.2f} "
              f"| {fmt(r['readings_per_s'])} | {r['mb_per_s']:.1f} | {r.get('cpu_pct', '?')} "
              f"| {fmt(r.get('peak_rss_mb', 0))} |")
    by = {r["name"]: r for r in rows}
    if "w1" in by and "w2" in by:
        print(f"\nscaling -w 1 → -w 2: **{by['w2']['readings_per_s'] / by['w1']['readings_per_s']:.2f}×**")
    if "w1-pipeline" in by and "w2-pipeline" in by:
        print(f"\nscaling -w 1 → -w 2, without `enriched.jsonl`:"
              f" **{by['w2-pipeline']['readings_per_s'] / by['w1-pipeline']['readings_per_s']:.2f}×**")

    print("\n(`-stages` runs log every operator's schedule for the tables below, which slows them;"
          " the throughput is that of the runs without)")
    for name in ("w1-stages", "w2-stages"):
        b = by.get(name, {}).get("bench", {})
        if "busy_s_by_step" in b:
            total = b["busy_s_total"]
            print(f"\n## where the time goes, {name} (busy seconds summed over workers; parked {b['parked_s']:.2f} s)\n")
            print("| step | busy s | share of busy |")
            print("|------|--------|---------------|")
            for step, sec in b["busy_s_by_step"].items():
                print(f"| {step} | {sec:.2f} | {100 * sec / total:.1f}% |")
            print("\nbusiest operators: " + ", ".join(
                f"`{k}` {v:.2f} s" for k, v in list(b["busy_s_by_operator"].items())[:8]))

    if "paced" in by:
        lat = by["paced"]["bench"].get("latency", {})
        try:
            speed = open(os.path.join(runs, "paced.speed")).read().strip()
        except OSError:
            speed = "?"
        print(f"\n## paced run (-w 2, --speed {speed}): offered ≈ {fmt(by['paced']['summary']['valid'] / by['paced']['summary']['wall_time_s'])}"
              " readings/s achieved\n")
        print("| latency | samples | p50 ms | p90 ms | p99 ms | max ms |")
        print("|---------|---------|--------|--------|--------|--------|")
        for k in ("ingest_to_event", "ingest_to_backup_durable"):
            v = lat.get(k)
            if v:
                print(f"| {k} | {fmt(v['count'])} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {v['p99_ms']:.2f} | {v['max_ms']:.2f} |")

    sparks = [(n, load(os.path.join(runs, f"spark-{n}.json"))) for n in ("one", "chunks")]
    sparks = [(n, s) for n, s in sparks if s]
    if sparks:
        print("\n## Spark Structured Streaming baseline (local[2], same dataset, same run)\n")
        print("| config | readings | micro-batches | processing s | readings/s "
              "| eddy -w 2, every job ÷ Spark | eddy -w 2, Spark's work (`--outputs windows`) ÷ Spark |")
        print("|--------|----------|---------------|--------------|------------|------|------|")

        def best(names):
            v = [by[n]["readings_per_s"] for n in names if n in by]
            return max(v) if v else 0

        e = best(("w2", "w2-after-spark"))
        ew = best(("w2-windows", "w2-windows-after-spark"))
        for n, s in sparks:
            print(f"| {s['config']} | {fmt(s['readings'])} | {s['batches']} | {s['processing_s']:.1f} "
                  f"| {fmt(s['readings_per_s'])} | {e / s['readings_per_s']:.1f}× | {ew / s['readings_per_s']:.1f}× |")
        print(f"\n(eddy: the faster of the two -w 2 runs of each, {fmt(e)} and {fmt(ew)} readings/s;"
              f" Spark's session start, {sparks[0][1]['session_start_s']:.1f} s, is not counted)")

    for name, what in (("million", "15 minutes of readings, every key young (at most 3 values)"),
                       ("million-steady", "75 minutes of readings, the steady state (every key past its young "
                                          "values, an hour of trend, an hourly close)")):
        if name not in by:
            continue
        r = by[name]
        rss = r["rss"]
        tail = sorted(rss[len(rss) // 2:]) if rss else [0]
        print(f"\n## memory: 1,000,000 devices × 5 channels, {what}\n")
        print(f"peak RSS {fmt(r.get('peak_rss_mb', 0))} MB; median RSS over the second half of the run "
              f"{fmt(tail[len(tail) // 2])} MB ({len(rss)} samples); {fmt(r['summary']['valid'])} readings "
              f"at {fmt(r['readings_per_s'])} readings/s")


if __name__ == "__main__":
    main()
