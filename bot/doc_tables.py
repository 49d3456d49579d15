"""The docs' tables of parameters and settings, generated from the declarations (nothing restated by hand).

``python -m bot.doc_tables`` rewrites each table between its ``<!-- table:NAME -->`` and
``<!-- /table -->`` markers in docs/*.md; a test checks that the docs hold exactly what this gives.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bot.config import BotConfig, RedisConfig, env_name, redis_env_name
from bot.settings import SETTINGS, ServerSettings, setting_allowed
from omost_engine.declared import allowed_text, fields_of
from omost_engine.layout import LayoutRecord
from omost_engine.params import LLMParams, RenderParams

DOCS = Path(__file__).resolve().parents[1] / "docs"
_MARKER = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(model: type, name: str) -> str:
    info = fields_of(model)[name]
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    if default in (None, (), []):
        return "—"
    if isinstance(default, str):
        return f"`{default}`" if default else "empty"
    return f"`{default}`"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bot_config() -> str:
    rows = [
        (
            f"`{env_name(n)}`",
            f"`{n}` in `[bot]`",
            _default(BotConfig, n),
            allowed_text(BotConfig, n),
            info.description or "",
        )
        for n, info in fields_of(BotConfig).items()
    ]
    rows += [
        (
            f"`{redis_env_name(n)}`",
            f"`{n}` in `[redis]`",
            _default(RedisConfig, n),
            allowed_text(RedisConfig, n),
            info.description or "",
        )
        for n, info in fields_of(RedisConfig).items()
    ]
    return _table(("variable", "TOML key", "default", "allowed", "meaning"), rows)


def server_settings() -> str:
    rows = [
        (f"`{key}`", setting_allowed(key), " and ".join(spec.scopes), spec.help)
        for key, spec in SETTINGS.items()
    ]
    assert set(SETTINGS) == set(fields_of(ServerSettings))
    return _table(("key", "allowed", "scopes", "meaning"), rows)


def _params(model: type) -> str:
    rows = [
        (f"`{n}`", allowed_text(model, n), _default(model, n), info.description or "")
        for n, info in fields_of(model).items()
    ]
    return _table(("field", "allowed", "default", "meaning"), rows)


def layout_record() -> str:
    rows = [
        (f"`{n}`", allowed_text(LayoutRecord, n), info.description or "")
        for n, info in fields_of(LayoutRecord).items()
    ]
    return _table(("field", "allowed", "meaning"), rows)


TABLES: dict[str, Callable[[], str]] = {
    "bot-config": bot_config,
    "server-settings": server_settings,
    "render-params": lambda: _params(RenderParams),
    "llm-params": lambda: _params(LLMParams),
    "layout-record": layout_record,
}


def rewrite(text: str) -> str:
    return _MARKER.sub(lambda m: m.group(1) + TABLES[m.group("name")]() + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        new = rewrite(text)
        if new != text:
            stale.append(path.name)
            if not check:
                path.write_text(new, encoding="utf-8")
    if stale:
        print(("out of date: " if check else "rewrote: ") + ", ".join(stale))
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
