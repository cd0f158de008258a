#!/usr/bin/env python3
"""The house in numbers: file and function lengths of the non-test code, and the functions
that return `Result<_, String>` (there should be none).

    python3 tests/measure.py [REPO]

Code after a file's `#[cfg(test)]` and files named `tests.rs` are tests and not counted. A
function's length runs from its `fn` line to its closing brace (brace matching, good enough for
this code base: no braces in its strings that would unbalance a function).
"""
import os
import re
import statistics
import sys

ROOTS = ["agent/src", "collector/src", "config/src", "protocol/src", "protocol/program/src"]
FN = re.compile(r"\s*(pub(\([a-z]+\))?\s+)?(async\s+)?(const\s+)?fn\s+(\w+)")
RESULT = re.compile(r"->\s*(?:std::result::)?Result<")


def count_string_results(code):
    """How many functions return a `Result` whose error type (its last argument, at the top
    level of its angle brackets) is `String`."""
    n = 0
    for m in RESULT.finditer(code):
        depth, args, start = 1, [], m.end()
        i = start
        while i < len(code) and depth > 0:
            c = code[i]
            if c == "<":
                depth += 1
            elif c == ">":
                depth -= 1
                if depth == 0:
                    args.append(code[start:i])
            elif c == "," and depth == 1:
                args.append(code[start:i])
                start = i + 1
            i += 1
        if len(args) == 2 and args[1].strip() == "String":
            n += 1
    return n


def code_of(path):
    text = open(path, encoding="utf-8").read()
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


def functions(lines, path):
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, started = 0, False
        for j in range(i, len(lines)):
            depth += lines[j].count("{") - lines[j].count("}")
            started = started or "{" in lines[j]
            if started and depth <= 0:
                yield (j - i + 1, path, m.group(5))
                break
            if not started and lines[j].rstrip().endswith(";"):
                break


def main():
    repo = sys.argv[1] if len(sys.argv) > 1 else "."
    lengths, funcs, string_results = {}, [], 0
    for root in ROOTS:
        for folder, _, names in os.walk(os.path.join(repo, root)):
            for name in names:
                if not name.endswith(".rs") or name == "tests.rs":
                    continue
                path = os.path.join(folder, name)
                code = code_of(path)
                lines = code.split("\n")
                lengths[os.path.relpath(path, repo)] = len(lines)
                string_results += count_string_results(code)
                funcs.extend(functions(lines, os.path.relpath(path, repo)))
    sizes = sorted(lengths.values())
    print(f"files: {len(sizes)}, median {statistics.median(sizes):.0f} lines, "
          f"p90 {sizes[int(len(sizes) * 0.9)]}, max {max(sizes)} ({max(lengths, key=lengths.get)}), "
          f"{sum(1 for n in sizes if n > 500)} over 500")
    funcs.sort(reverse=True)
    over = lambda n: sum(1 for f in funcs if f[0] > n)
    print(f"functions: {len(funcs)}, over 120 lines: {over(120)}, over 100: {over(100)}, over 80: {over(80)}")
    for n, path, name in funcs:
        if n <= 80:
            break
        print(f"  {n:4} {path} {name}")
    print(f"Result<_, String> in library code: {string_results}")
    for main_rs in ["agent/src/main.rs", "collector/src/main.rs"]:
        n = len(open(os.path.join(repo, main_rs), encoding="utf-8").read().splitlines())
        print(f"{main_rs}: {n} lines")


if __name__ == "__main__":
    main()
