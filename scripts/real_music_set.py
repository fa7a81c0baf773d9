#!/usr/bin/env python3
"""Build the real-music test library of docs/genre_classifier.md ("Real music") from Debian packages.

Freely licensed game soundtracks ship in Debian as ordinary packages; this script downloads the
pinned versions below (``apt-get download``, no root, nothing installed), unpacks them
(``dpkg -x``), cuts a fixed excerpt from the middle of each selected recording (ffmpeg, Ogg
Vorbis) into ``LIB/<genre>/<package> - <title>.ogg`` and prints the licence of every file, from
the package's own ``debian/copyright`` (the most specific ``Files:`` stanza that matches the
installed path; the whole-package licence where the copyright file is not machine-readable).

Usage:
    python scripts/real_music_set.py LIB [--work DIR] [--excerpt-seconds 60] [--markdown]
    python -m dataset_tools prepare LIB DATASET --no-analyze
    python -m genre_classifier train DATASET --out OUT --cv 5

The genres are labelled from the source collection, the files' own tags and their titles (the
recordings were not listened to): see SELECTION. Needs apt-get, dpkg-deb and ffmpeg; about
2.5 GB of downloads (kept in ``--work``, so a re-run downloads nothing).
"""
from __future__ import annotations

import argparse
import fnmatch
import gzip
import re
import subprocess
import sys
from pathlib import Path

# Debian 12 (bookworm) versions the figures in the docs were measured on.
PACKAGES = {
    "wesnoth-1.16-music": "1:1.16.9-1",
    "megaglest-data": "3.13.0-3",
    "warzone2100-music": "4.3.3-3",
    "singularity-music": "007-2",
    "freedroidrpg-data": "1.0-1",
    "supertuxkart-data": "1.4+dfsg-2",
    "supertux-data": "0.6.3-2",
    "extremetuxracer-data": "0.8.2-1",
    "hedgewars-data": "1.0.2-6",
    "widelands-data": "2:1.1-3",
}

# Licences read by hand: copyright files in free text (no DEP-5 stanzas), and one the matcher misreads.
FREE_TEXT_LICENCES = {
    "wesnoth-1.16-music": "GPL-2+ (The Battle for Wesnoth, all content; see the package's copyright file)",
    "singularity-music": "CC-BY-SA-3.0 (Max McCracken; the files' LICENSE tag says the same)",
    # DEP-5, but the matcher below would take the game's source folder "hedgewars/*" for the
    # installed ".../games/hedgewars/Data/Music/"; no stanza names the music, so "Files: *" applies.
    "hedgewars-data": "GPL-2 (Files: *; no stanza names Data/Music)",
}

_WZ = "usr/share/games/warzone2100/music/albums/"
_STK = "usr/share/games/supertuxkart/data/music/"
_ST = "usr/share/games/supertux2/music/"
_MG = "usr/share/games/megaglest/techs/megapack/factions/"
_WES = "usr/share/games/wesnoth/1.16/data/core/music/"

# (genre, package, path inside the package, why this label)
SELECTION = [
    # orchestral: the Wesnoth soundtrack (tagged GENRE=Romantic Classical) and one orchestral piece
    # from another game by one of its composers (Mattias Westlund; tagged GENRE=Classical)
    *[("orchestral", "wesnoth-1.16-music", _WES + name + ".ogg", "Wesnoth OST, tagged Romantic Classical")
      for name in ("battle", "breaking_the_chains", "casualties_of_war", "elvish-theme", "heroes_rite",
                   "into_the_shadows", "journeys_end", "legends_of_the_north", "northerners",
                   "siege_of_laurelmor", "the_city_falls", "the_dangerous_symphony", "weight_of_revenge")],
    ("orchestral", "megaglest-data", _MG + "romans/music/romans.ogg", "Westlund, tagged Classical"),
    # electronic: three games' electronic soundtracks plus two tracks tagged electronic/psychedelic
    *[("electronic", "warzone2100-music", _WZ + name + ".opus", "Warzone 2100 electronic soundtrack")
      for name in ("original_soundtrack/track1", "original_soundtrack/track2", "legacy_soundtrack/track5",
                   "legacy_soundtrack/track9", "aftermath_soundtrack/track17")],
    *[("electronic", "singularity-music", "usr/share/games/singularity/music/" + name + ".ogg",
       "Endgame: Singularity, made in Psycle/Renoise trackers")
      for name in ("Aberrations", "Awakening", "By-Product", "Coherence", "Nebula")],
    ("electronic", "freedroidrpg-data", "usr/share/freedroidrpg/data/sound/music/TheBeginning.ogg", "tagged ambient"),
    ("electronic", "freedroidrpg-data", "usr/share/freedroidrpg/data/sound/music/temple.ogg", "tagged dnb"),
    ("electronic", "freedroidrpg-data", "usr/share/freedroidrpg/data/sound/music/ImperialArmy.ogg",
     "FreedroidRPG, same artist as temple"),
    ("electronic", "freedroidrpg-data", "usr/share/freedroidrpg/data/sound/music/Bleostrada.ogg",
     "kahvi (electronic netlabel)"),
    ("electronic", "supertuxkart-data", _STK + "valley.ogg", "tagged Electronic"),
    ("electronic", "supertuxkart-data", _STK + "SkyVibe-HighFrequency.ogg", "tagged Psychedelic (trance)"),
    # arcade: the upbeat pop/rock/synth tunes of three Tux racing and platform games
    *[("arcade", "supertuxkart-data", _STK + name + ".ogg", "SuperTuxKart race/menu theme")
      for name in ("Penguin_Party", "kart_grand_prix", "menutheme", "overworld", "snowmountain", "garden",
                   "Lava", "cocoa_river")],
    *[("arcade", "supertux-data", _ST + name + ".ogg", "SuperTux level theme")
      for name in ("misc/theme", "forest/forest_theme", "misc/christmas_theme", "forest/bright_thunders",
                   "forest/shallow-green", "misc/credits", "antarctic/arctic_breeze")],
    *[("arcade", "extremetuxracer-data", "usr/share/games/etr/music/" + name + ".ogg", "Extreme Tux Racer race theme")
      for name in ("calmrace-ks", "spunkyrace-ks", "freezingpoint")],
    # world_folk: tracks whose title or faction names a regional or folk style, from five games
    # (hyperrogue-music's "Caribbean" would be a sixth, but ffmpeg cannot read its Ogg headers)
    *[("world_folk", "supertuxkart-data", _STK + name + ".ogg", "title: " + name)
      for name in ("celtic", "hacienda", "egypt", "West", "klabauter_dance")],
    ("world_folk", "hedgewars-data", "usr/share/games/hedgewars/Data/Music/oriental.ogg", "title: oriental"),
    ("world_folk", "hedgewars-data", "usr/share/games/hedgewars/Data/Music/pirate.ogg", "title: pirate"),
    ("world_folk", "megaglest-data", _MG + "indian/music/music_indian.ogg", "Indian faction"),
    ("world_folk", "megaglest-data", _MG + "persian/music/aminos-together_together.ogg", "Persian faction"),
    ("world_folk", "megaglest-data", _MG + "egypt/music/asak-jadeflange.ogg", "Egyptian faction"),
    ("world_folk", "megaglest-data", _MG + "norsemen/music/manolo_camp-medieval.ogg", "title: medieval"),
    ("world_folk", "wesnoth-1.16-music", _WES + "traveling_minstrels.ogg", "title: traveling minstrels"),
    ("world_folk", "widelands-data", "usr/share/games/widelands/data/music/ingame_28.ogg", "tagged folk"),
]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


def fetch(work: Path) -> dict[str, Path]:
    """Download (once) and unpack every package; ``{package: unpacked root}``."""
    debs, roots = work / "debs", {}
    debs.mkdir(parents=True, exist_ok=True)
    for pkg, version in PACKAGES.items():
        file_version = version.replace(":", "%3a")  # apt-get download writes an epoch's ':' as %3a
        deb = next(iter(debs.glob(f"{pkg}_{file_version}_*.deb")), None)
        if deb is None:
            print(f"downloading {pkg}={version}", file=sys.stderr)
            run(["apt-get", "download", f"{pkg}={version}"], cwd=debs)
            deb = next(debs.glob(f"{pkg}_{file_version}_*.deb"))
        root = work / "extract" / pkg
        if not root.is_dir():
            run(["dpkg-deb", "-x", str(deb), str(root)])
        roots[pkg] = root
    return roots


def _stanzas(copyright_text: str) -> list[tuple[list[str], str]]:
    """DEP-5 ``(Files globs, License short name)`` pairs, in file order."""
    out = []
    for block in re.split(r"\n\s*\n", copyright_text):
        files = re.search(r"^Files:(.*(?:\n[ \t]+.*)*)", block, re.M)
        licence = re.search(r"^License:[ \t]*(\S.*)$", block, re.M)
        if files and licence:
            out.append((files.group(1).split(), licence.group(1).strip()))
    return out


def licence_of(root: Path, pkg: str, path: str) -> str:
    """The licence of one installed file: the DEP-5 stanza whose glob matches the longest tail of
    the installed path (source paths differ from installed ones: ``data/music/x.ogg`` is installed
    as ``usr/share/games/.../music/x.ogg``), later stanzas winning ties, as DEP-5 says. A glob
    may lose leading folders but keeps two components at least (``debian/*`` never becomes
    ``*``); only ``Files: *`` itself matches everything. A ``license.txt`` beside the file (the
    Warzone 2100 albums ship one) is quoted too."""
    notes = ""
    for name in ("license.txt", "LICENSE.txt", "LICENSE"):
        beside = (root / path).parent / name
        if beside.is_file():
            ids = re.findall(r"^(CC-[A-Z-]+[0-9.]+.*|GPL.*)$", beside.read_text(errors="replace"), re.M)
            notes = f"; {name} beside it: {ids[0].strip() if ids else 'see it'}"
    if pkg in FREE_TEXT_LICENCES:
        return FREE_TEXT_LICENCES[pkg] + notes
    doc = root / "usr/share/doc" / pkg / "copyright"
    text = gzip.decompress(doc.read_bytes()).decode() if doc.suffix == ".gz" else doc.read_text(errors="replace")
    parts = path.split("/")
    best, best_len = "unknown (see the package's copyright file)", -1
    for globs, licence in _stanzas(text):
        for glob in globs:
            gparts = glob.split("/")
            tails = [gparts] if glob == "*" else [gparts[d:] for d in range(len(gparts) - 1)]
            score = -1
            for tail in tails:  # "data/music/*" -> "music/*"
                if any(fnmatch.fnmatchcase("/".join(parts[-n:]), "/".join(tail))
                       for n in range(len(tail), len(parts) + 1)):
                    score = max(score, len(tail) if glob != "*" else 0)
            if score >= 0 and score >= best_len:
                best, best_len = f"{licence} (Files: {glob})", score
    return best + notes


def duration(path: Path) -> float:
    out = run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
              capture_output=True, text=True).stdout
    return float(out.strip())


def build(lib: Path, roots: dict[str, Path], excerpt: float) -> list[dict]:
    """Write ``LIB/<genre>/<package> - <title>.ogg``; returns one record per file."""
    records = []
    for genre, pkg, path, why in SELECTION:
        src = roots[pkg] / path
        total = duration(src)
        title = Path(path).stem.replace("/", " ")
        dst = lib / genre / f"{pkg.split('-')[0]} - {title}.ogg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        # The middle of the track: past intros and fade-outs, the part most typical of it.
        start = max(0.0, (total - excerpt) / 2) if excerpt else 0.0
        length = min(excerpt, total) if excerpt else total
        if not dst.exists():
            run(["ffmpeg", "-v", "error", "-y", "-ss", f"{start:.2f}", "-t", f"{length:.2f}", "-i", str(src),
                 "-vn", "-c:a", "libvorbis", "-q:a", "6", str(dst)])
        records.append({"genre": genre, "file": str(dst.relative_to(lib)), "package": pkg,
                        "version": PACKAGES[pkg], "source": "/" + path, "seconds": round(length, 1),
                        "track_seconds": round(total, 1), "label_from": why,
                        "licence": licence_of(roots[pkg], pkg, path)})
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("lib", type=Path, help="library folder to write (genre subfolders)")
    p.add_argument("--work", type=Path, default=Path("realmusic-work"), help="downloads and unpacked packages")
    p.add_argument("--excerpt-seconds", type=float, default=60.0,
                   help="seconds cut from the middle of each recording (0: the whole recording)")
    p.add_argument("--markdown", action="store_true", help="print the file list as a Markdown table")
    args = p.parse_args(argv)
    records = build(args.lib, fetch(args.work), args.excerpt_seconds)
    print("package licences:")
    for pkg, version in PACKAGES.items():
        licences = sorted({r["licence"].split(" (")[0] for r in records if r["package"] == pkg})
        print(f"  {pkg} {version}: {', '.join(licences)}")
    if args.markdown:
        print("\n| genre | file | package (version) | source file | licence | label from |\n|---|---|---|---|---|---|")
        for r in records:
            print(f"| {r['genre']} | {Path(r['file']).name} | {r['package']} ({r['version']}) | `{r['source']}` "
                  f"| {r['licence']} | {r['label_from']} |")
    else:
        for r in records:
            print(f"{r['file']}: {r['seconds']} s of {r['track_seconds']} s, {r['package']} {r['version']}, "
                  f"{r['licence']}; label: {r['label_from']}")
    counts = {}
    for r in records:
        counts[r["genre"]] = counts.get(r["genre"], 0) + 1
    print(f"{len(records)} recordings: " + ", ".join(f"{g} {n}" for g, n in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
