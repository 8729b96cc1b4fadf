"""Speed-up table from a pytest-benchmark JSON file: each group's medians against its baseline.

    python benchmarks/ratios.py out.json [--baseline sklearn-loop]

The baseline of a group is the entry whose ``extra_info["method"]`` (or name) matches
``--baseline``; ratios are baseline median / entry median (> 1 means faster than the baseline).
"""
import argparse
import json
from collections import defaultdict


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("json_file")
    ap.add_argument("--baseline", default="sklearn-loop")
    args = ap.parse_args(argv)
    data = json.load(open(args.json_file))
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
          f"{machine.get('cpu', {}).get('count', '?')} cores, python {machine.get('python_version')}")
    for group, rows in groups.items():
        base = [r for r in rows if r.get("extra_info", {}).get("method") == args.baseline
                or args.baseline in r["name"]]
        base_median = base[0]["stats"]["median"] if base else None
        print(f"\n{group}")
        for r in rows:
            med = r["stats"]["median"]
            method = r.get("extra_info", {}).get("method", r["name"])
            ratio = f"{base_median / med:8.1f}x" if base_median else ""
            spread = f"[{r['stats']['min']:.3f}, {r['stats']['max']:.3f}]"
            print(f"  {method:<22} median {med:9.4f} s {spread:<20} {ratio}")


if __name__ == "__main__":
    main()
