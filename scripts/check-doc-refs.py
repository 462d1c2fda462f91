#!/usr/bin/env python3
"""Check that what README.md and docs/*.md cite exists in the repository.

Four kinds of reference are checked:

1. Markdown links to local files, `[text](docs/gui.md#anchor)`: the file
   must exist (relative to the document), and an anchor into a Markdown
   file must be one of its headings (GitHub's slugs).
2. Repository paths, in code spans or plain text: anything that starts
   with a top-level entry of the repository (`client/src/tls.rs`,
   `tests/tests/hostile_relay.rs`, `scripts/check-defences.py`, `.ci/run`,
   `docs/screenshots/chat.png`, `testdata/identities/*.sotto-id`) must
   exist (a `*` must match something). A code span holding only a file
   name or a path below a crate (`engine.rs`, `session/engine.rs`) must
   name the end of some file's path.
3. Test and function names: a code span holding a snake_case identifier of
   four or more words (`offline_queue_survives_a_killed_relay`,
   `Identity::unwrap_session_key` is checked as `unwrap_session_key` only
   if it has four words) must be defined in the repository's Rust code as
   `fn NAME`, or as a field or setting `NAME:` / `NAME =` (a
   configuration key like `max_stored_per_recipient`). A hostile-relay
   scenario cited by its number alone (`s07`) must be a test `fn s07_...`.
4. Markdown files named anywhere, in the docs and in the repository's
   sources and scripts too (`see threat-model.md`, `DESIGN.md`): a bare
   `NAME.md` must be a Markdown file of the repository, so that the
   repository stands alone.

The repository's files are what `git ls-files` lists, tracked or new but
not ignored (every file under the root, outside `.git/` and `target/`,
where git is not available). URLs are ignored, and so is anything under
`target/`. Standard library only; prints each dangling reference as
FILE:LINE and exits 1 if there is any.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", "target", "node_modules", "__pycache__"}
# File endings that make a bare code span (no top-level directory) a file
# reference: `engine.rs`, `session/engine.rs`.
# (Not .toml, .json or .txt: those are mostly files a program writes at run
# time, `relay.toml`, `settings.json`, `servers.txt`.)
FILE_SUFFIXES = (".rs", ".md", ".py", ".sh")

URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S*|mailto:\S+|www\.\S+")
LINK = re.compile(r"\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
IDENT = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+){3,}$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def repo_files() -> list[str]:
    """The repository's files, as relative POSIX paths."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode("utf-8", errors="replace")
        # Deleted but not yet committed files are still listed: keep what exists.
        return [f for f in listed.split("\0") if f and (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        rel = Path(dirpath).relative_to(ROOT)
        for name in filenames:
            files.append((rel / name).as_posix() if str(rel) != "." else name)
    return files


def rust_definitions(files: list[str]) -> tuple[set[str], set[str]]:
    """Names defined as `fn NAME`; and names used as `NAME:` or `NAME =`
    (fields, settings) or as a whole string literal `"NAME"` (metric and
    benchmark names)."""
    fns: set[str] = set()
    keys: set[str] = set()
    fn_def = re.compile(r"\bfn\s+([a-z_][a-z0-9_]*)")
    key_def = re.compile(
        r"\b([a-z_][a-z0-9_]*)\s*(?::(?!:)|=(?!=))"  # a field, a setting
        r"|\"([a-z_][a-z0-9_]*)\""  # a string literal
    )
    for path in files:
        if not path.endswith((".rs", ".toml")):
            continue
        try:
            text = (ROOT / path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.endswith(".rs"):
            fns.update(fn_def.findall(text))
        for field, literal in key_def.findall(text):
            keys.add(field or literal)
    return fns, keys


def gitignored() -> list[str]:
    """The root .gitignore's anchored entries (`/fuzz/corpus`): paths the
    docs may name although no clone holds them."""
    try:
        lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [
        line.strip().strip("/")
        for line in lines
        if line.strip().startswith("/") and not any(c in line for c in "*?[!")
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: keep text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        found: set[str] = set()
        counts: dict[str, int] = {}
        fenced = False
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
                continue
            match = None if fenced else HEADING.match(line)
            if match:
                base = slug(match.group(2))
                n = counts.get(base, 0)
                counts[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        cache[path] = found
    return cache[path]


def main() -> int:
    files = repo_files()
    file_set = set(files)
    dir_set = {str(Path(f).parent.as_posix()) for f in files}
    for d in list(dir_set):
        while d not in (".", ""):
            d = str(Path(d).parent.as_posix())
            dir_set.add(d)
    top = sorted({f.split("/", 1)[0] for f in files}, key=len, reverse=True)
    top_dirs = [t for t in top if t in dir_set]
    top_files = [t for t in top if t in file_set]
    fns, keys = rust_definitions(files)

    # A repository path in running text: a top-level directory, then a
    # path; or a top-level file name on its own.
    dirs_alt = "|".join(re.escape(t) for t in top_dirs)
    files_alt = "|".join(re.escape(t) for t in top_files)
    path_re = re.compile(
        r"(?<![\w./~$-])("
        + r"(?:" + dirs_alt + r")/(?:[\w./*-]|\{[\w.,/-]*\})*"
        + r"|(?:" + files_alt + r")(?![\w.-])"
        + r")"
    )

    ignored = gitignored()

    def exists(path: str) -> bool:
        path = path.rstrip(".,;:")
        if path.startswith("target/") or any(
            path == i or path.startswith(i + "/") for i in ignored
        ):
            return True
        if "{" in path:  # `a/{b,c}.rs`: each alternative
            head, _, rest = path.partition("{")
            inner, _, tail = rest.partition("}")
            return all(exists(head + alt + tail) for alt in inner.split(","))
        if "*" in path:
            pattern = re.compile(
                "^" + re.escape(path.rstrip("/")).replace(r"\*", "[^/]*") + "(/.*)?$"
            )
            return any(pattern.match(f) for f in files)
        path = path.rstrip("/")
        return path in file_set or path in dir_set

    docs = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    cache: dict[Path, set[str]] = {}
    problems: list[str] = []

    for doc in docs:
        rel_doc = doc.relative_to(ROOT).as_posix()
        fenced = False
        lines = doc.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, raw in enumerate(lines, 1):
            where = f"{rel_doc}:{number}"

            def report(kind: str, what: str) -> None:
                problems.append(f"{where}: {kind}: {what}")

            if raw.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
                continue

            # 1. Markdown links (outside code blocks).
            if not fenced:
                for target in LINK.findall(raw):
                    if URL.match(target) or target.startswith("mailto:"):
                        continue
                    file_part, _, anchor = target.partition("#")
                    path = (doc.parent / file_part).resolve() if file_part else doc
                    try:
                        rel = path.relative_to(ROOT).as_posix()
                    except ValueError:
                        report("link outside the repository", target)
                        continue
                    if file_part and not exists(rel):
                        report("link to a missing file", target)
                    elif anchor and path.suffix == ".md" and path.is_file():
                        if anchor not in anchors(path, cache):
                            report("link to a missing heading", target)

            line = URL.sub(" ", raw)

            # 2. Repository paths, anywhere (code blocks included).
            seen: set[str] = set()
            for path in path_re.findall(line):
                path = path.rstrip(".,;:")
                if path in seen or path.endswith("..."):
                    continue
                seen.add(path)
                if not exists(path):
                    report("missing path", path)

            if fenced:
                continue

            for _, span in CODE_SPAN.findall(line):
                span = span.strip()
                # 2b. A bare file name or a path below a crate.
                if (
                    re.fullmatch(r"[\w-]+(?:/[\w.-]+)*\.[a-z]+", span)
                    and span.endswith(FILE_SUFFIXES)
                    and span.split("/", 1)[0] not in top
                    and span not in seen
                ):
                    if not any(f == span or f.endswith("/" + span) for f in files):
                        report("no file of that name", span)
                # 3. Test and function names.
                name = span.split("::")[-1]
                name = name[:-2] if name.endswith("()") else name
                if IDENT.match(name) and name not in fns and name not in keys:
                    report("no `fn` of that name", name)
                scenario = re.fullmatch(r"s\d{2}", span)
                if scenario and not any(f.startswith(span + "_") for f in fns):
                    report("no scenario test of that number", span)

    # 4. Every `NAME.md` named in docs, sources and scripts is ours.
    markdown = {Path(f).name for f in files if f.endswith(".md")}
    md_name = re.compile(r"(?<![\w/.-])([A-Za-z][\w-]*\.md)\b")
    this = Path(__file__).resolve().relative_to(ROOT).as_posix()
    texts = [
        f
        for f in files
        if f != this and (f.endswith((".md", ".rs", ".py", ".sh", ".toml")) or f == ".ci/run")
    ]
    for path in sorted(texts):
        try:
            text = (ROOT / path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for name in md_name.findall(URL.sub(" ", line)):
                if name not in markdown:
                    problems.append(
                        f"{path}:{number}: no Markdown file of that name in the repository: {name}"
                    )

    for problem in problems:
        print(problem)
    if problems:
        print(f"\n{len(problems)} dangling reference(s)", file=sys.stderr)
        return 1
    print(f"doc references: {len(docs)} documents and {len(texts)} sources checked, all exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
