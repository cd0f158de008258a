#!/usr/bin/env python3
"""Stand-ins for AlignTK 1.0.2's find_rst, register, align and apply_map.

The end-to-end tests run the real AlignTK wherever they can; these stand in only where a test
needs a fault the real tools cannot be made to produce on demand (fail, hang, be slow, count runs). They check the
arguments and input files the way the real tools need them and reproduce the behaviour recorded
in NOTES.md: every runtime error aborts (exit 134), `cmaps/` must exist before find_rst,
align refuses absolute `-maps /maps/` and a malformed schedule.lst, and a blank section
passes with exit 0, showing only as QUALITY nan in cmaps/summary.out and CORRELATION -1000000
in maps/summary.out (both real tables: printed twice, each row naming the two images as separate
words). Map files get the real text header. Like the real tools they read 8-bit grayscale only
and abort on anything else with the real tools' first stderr line.

Test controls (environment): STANDIN_FAIL=<tool> aborts that tool; STANDIN_HANG=<tool> makes it
sleep until killed; STANDIN_SLEEP=<tool>:<seconds> makes it slow; STANDIN_LOG=<file> appends
one line per run (tool, pid, cwd) so tests can count runs.
"""
import os
import struct
import sys
import time

TOOL = os.path.basename(sys.argv[0])


def die(msg):
    sys.stderr.write(f"{TOOL}: {msg}\n")
    sys.stderr.flush()
    os.abort()  # AlignTK calls abort() on every runtime error: exit 134


def args():
    a, out, i = sys.argv[1:], {}, 0
    while i < len(a):
        if a[i].startswith("-"):
            key = a[i][1:]
            if i + 1 < len(a) and not a[i + 1].startswith("-") or (i + 1 < len(a) and a[i + 1][1:2].isdigit()):
                out[key] = a[i + 1]
                i += 2
            else:
                out[key] = True
                i += 1
        else:
            die(f"unexpected argument {a[i]}")
    return out


def need(opts, *keys):
    for k in keys:
        if k not in opts:
            sys.stderr.write(f"Usage: {TOOL} ... -{k} ... (missing -{k})\n")
            sys.exit(1)


def read_pairs(path):
    if not os.path.isfile(path):
        die(f"Could not open pair file {path}")
    pairs = []
    for line in open(path):
        f = line.split()
        if len(f) != 3:
            die(f"malformed pair line: {line!r}")
        pairs.append(f)
    return pairs


def tiff_pixels(path):
    """Width, height and whether every pixel has one value (a blank section). Like the real
    tools, only 8-bit grayscale is read: anything else aborts with their message."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        die(f"Could not read image {path}")
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] not in (b"II*\0", b"II+\0"):
        die(f"Could not open TIFF image: {path}")
    big = data[2] == 0x2B
    ifd = struct.unpack_from("<Q" if big else "<I", data, 8 if big else 4)[0]
    if ifd + 8 > len(data):
        die(f"Could not read image {path}")
    n = struct.unpack_from("<Q" if big else "<H", data, ifd)[0]
    size = {3: 2, 4: 4, 16: 8}
    fmt = {3: "<H", 4: "<I", 16: "<Q"}
    tags = {}
    for k in range(n):
        at = ifd + (8 if big else 2) + k * (20 if big else 12)
        tag, typ = struct.unpack_from("<HH", data, at)
        count = struct.unpack_from("<Q" if big else "<I", data, at + 4)[0]
        voff = at + (12 if big else 8)
        if typ not in size:
            continue
        inline = size[typ] * count <= (8 if big else 4)
        base = voff if inline else struct.unpack_from("<Q" if big else "<I", data, voff)[0]
        tags[tag] = [struct.unpack_from(fmt[typ], data, base + i * size[typ])[0] for i in range(count)]
    w, h = tags.get(256, [0])[0], tags.get(257, [0])[0]
    bps = tags.get(258, [1])[0]
    if bps != 8:
        die(f"Either undefined or unsupported number of bits per sample (bps = {bps}) in tiff image {path}")
    px = b"".join(data[o:o + c] for o, c in zip(tags.get(273, []), tags.get(279, [])))
    if len(px) < w * h:
        die(f"Read error on input strip number 0 in TIFF file {path}")
    blank = px.count(px[:1]) == len(px) if px else True
    return w, h, blank


def map_file(path, level, w, h, image, ref):
    with open(path, "w") as f:
        f.write(f"M1\n{level}\n{w} {h}\n0 0\n{image} {ref}\n")


def controls():
    log = os.environ.get("STANDIN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{TOOL} {os.getpid()} {os.getcwd()}\n")
    if os.environ.get("STANDIN_FAIL") == TOOL:
        die("failing as told (STANDIN_FAIL)")
    if os.environ.get("STANDIN_HANG") == TOOL:
        while True:
            time.sleep(1)
    s = os.environ.get("STANDIN_SLEEP", "")
    if s.startswith(TOOL + ":"):
        time.sleep(float(s.split(":")[1]))


def find_rst(o):
    need(o, "pairs", "images", "output")
    if not os.path.isdir("cmaps"):
        die("Could not open output file cmaps/TEST.map")  # it test-writes there first
    lines = []
    for a, b, name in read_pairs(o["pairs"]):
        w, h, blank_a = tiff_pixels(os.path.join(o["images"], a + ".tif"))
        _, _, blank_b = tiff_pixels(os.path.join(o["images"], b + ".tif"))
        map_file(os.path.join(o["output"], name + ".map"), 10, w, h, a, b)
        q = "nan" if blank_a or blank_b else "0.930000"
        lines.append(f"{a}  {b}      {q}      0.000000      1.000000      0.000000      0.000000")
    if "summary" in o:
        # the real table, printed twice: by slice, then by quality
        head = "         SOURCE  TARGET   QUALITY     ROTATION    SCALE       TX          TY"
        with open(o["summary"], "w") as f:
            f.write("Sorted by slice:\n" + head + "\n" + "\n".join(lines) + "\n\n\n")
            f.write("Sorted by quality:\n" + head + "\n" + "\n".join(sorted(lines, key=lambda l: l.split()[2])) + "\n")


def register(o):
    need(o, "pairs", "images", "output", "initial_map")
    # the real register raises its own core limit and leaves a ~24 MB core when it aborts;
    # only a hard limit of 0 (set by the launcher) stops that
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    os.makedirs(o["output"], exist_ok=True)
    lines = []
    for a, b, name in read_pairs(o["pairs"]):
        init = os.path.join(o["initial_map"], name + ".map")
        if not os.path.isfile(init):
            die(f"Could not read map {init}")
        w, h, blank_a = tiff_pixels(os.path.join(o["images"], a + ".tif"))
        _, _, blank_b = tiff_pixels(os.path.join(o["images"], b + ".tif"))
        map_file(os.path.join(o["output"], name + ".map"), 6, w, h, a, b)
        c = "-1000000.000000" if blank_a or blank_b else "0.870000"
        lines.append(f"{a:>8} {b:>8}     {c}      0.000100      0.000000      0.000000     -{c.lstrip('-')}")
    if "summary" in o:
        # the real table, printed twice: by slice, then by energy
        head = "IMAGE    REFERENCE  CORRELATION   DISTORTION    CORRESPOND    CONSTRAIN     ENERGY"
        with open(o["summary"], "w") as f:
            f.write("Sorted by slice:\n" + head + "\n" + "\n".join(lines) + "\n\n\n")
            f.write("Sorted by energy:\n" + head + "\n" + "\n".join(lines) + "\n")


def align(o):
    need(o, "images", "image_list", "maps", "map_list", "output", "schedule", "output_grid", "grid_size", "fixed")
    if o["maps"].startswith("/"):
        die(f"Could not read map {o['maps']}{open(o['map_list']).read().split()[2]}.map")
    levels = []
    if not os.path.isfile(o["schedule"]):
        die("Could not open schedule file")
    for line in open(o["schedule"]):
        f = line.split()
        if not f:
            continue
        if len(f) < 3 or not all(x.replace(".", "", 1).replace("-", "", 1).isdigit() for x in f):
            die(f"malformed schedule line: {line!r}")
        levels.append(int(f[0]))
    if not levels or levels != sorted(levels, reverse=True):
        die("schedule levels must never increase")
    gw, _, gh = o["grid_size"].partition("x")
    if not (gw.isdigit() and gh.isdigit()):
        die(f"bad -grid_size {o['grid_size']}")
    images = [l.strip() for l in open(o["image_list"]) if l.strip()]
    if o["fixed"] not in images:
        die(f"fixed image {o['fixed']} is not in {o['image_list']}")
    for a, b, name in read_pairs(o["map_list"]):
        if not os.path.isfile(os.path.join(o["maps"], name + ".map")):
            die(f"Could not read map {o['maps']}{name}.map")
    os.makedirs(o["output"], exist_ok=True)
    os.makedirs(o["output_grid"], exist_ok=True)
    for im in images:
        w, h, _ = tiff_pixels(os.path.join(o["images"], im + ".tif"))
        map_file(os.path.join(o["output"], im + ".map"), 6, w, h, im, o["fixed"])
    with open(os.path.join(o["output_grid"], "grid.pnm"), "w") as f:
        f.write(f"P5\n{gw} {gh}\n255\n")


def apply_map(o):
    need(o, "image_list", "images", "maps", "output")
    os.makedirs(o["output"], exist_ok=True)
    images = [l.strip() for l in open(o["image_list"]) if l.strip()]
    size = None
    for im in images:
        if not os.path.isfile(os.path.join(o["maps"], im + ".map")):
            die(f"Could not read map {o['maps']}{im}.map")
        w, h, _ = tiff_pixels(os.path.join(o["images"], im + ".tif"))
        size = size or (w, h)
        with open(os.path.join(o["images"], im + ".tif"), "rb") as src, open(os.path.join(o["output"], im + ".tif"), "wb") as dst:
            dst.write(src.read())
    with open(os.path.join(o["output"], "size"), "w") as f:
        f.write(f"{size[0]} {size[1]}\n")


if __name__ == "__main__":
    opts = args()
    controls()
    {"find_rst": find_rst, "register": register, "align": align, "apply_map": apply_map}[TOOL](opts)
