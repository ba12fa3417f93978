"""How ``utilgen``'s command line reads its arguments and names them in ``--help``.

Both work on the click command tree typer builds, by duck typing (``param_type_name``,
``params``, ``commands``): typer may carry its own copy of click, so no click class is
imported here.
"""

from __future__ import annotations

from typing import Any


def plain_words(command: Any) -> Any:
    """``command`` (typer's click command tree) with its arguments shown as words in help:
    ``CONFIG``, ``RUN...``, instead of typer's ``{config}`` and ``<list[Path]>`` (options
    name their values with ``metavar``)."""
    for param in command.params:
        if param.param_type_name == "argument":
            word = param.metavar or (param.name or "value").upper()
            shown = (word if param.required else f"[{word}]") + ("..." if param.nargs != 1 else "")
            plain = {
                "get_usage_pieces": lambda self, ctx, shown=shown: [shown],
                "get_help_record": lambda self, ctx, shown=shown: (shown, self.help or ""),
            }
            param.__class__ = type(f"Plain{type(param).__name__}", (type(param),), plain)
    for sub in getattr(command, "commands", {}).values():
        plain_words(sub)
    return command


def repeated_option(command: Any, args: list[str]) -> str | None:
    """The first option of the invoked (sub)command given twice, where only once makes
    sense (``--out a --out b``, ``--report --no-report``), as an error message; else None.
    Click would silently keep the last one."""
    words = list(args)
    while words and words[0] in getattr(command, "commands", {}):
        command = command.commands[words.pop(0)]
    by_flag = {
        flag: param
        for param in command.params
        if param.param_type_name == "option"
        for flag in (*param.opts, *param.secondary_opts)
    }
    seen: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            break
        flag = word.split("=", 1)[0] if word.startswith("--") else word
        option = by_flag.get(flag)
        if option is None:
            continue
        if not option.is_flag and "=" not in word:
            index += 1  # its value, which may itself look like an option
        if option.multiple or option.count:
            continue
        name = option.name or flag
        if name in seen:
            if option.secondary_opts:  # --report / --no-report
                return f"{seen[name]} and {flag} both given; give one of them"
            long = max(option.opts, key=len)
            return f"{long} given twice ({seen[name]}, {flag}); give it once"
        seen[name] = flag
    return None
