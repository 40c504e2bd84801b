"""A flow run's ``config`` parameter, validated inside the flow so that a wrong one fails the run with one line.

Prefect (pinned: see requirements.txt) validates a run's parameters against the flow's signature before the flow
starts. A served run given ``{"cluster": {"n_clusters": 0}}`` failed there: no log line ("This run didn't
generate logs"), the reason only in a state message cut short among pydantic's types and links. So the parameter
is typed :data:`ConfigParameter`: a valid config is still a :class:`PipelineConfig` to Prefect (its form in the
UI and its schema stay those of the dataclasses), and any other mapping is let through to the flow, which says
in one line what is wrong (:func:`validated_config`).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Annotated, Any

import pydantic
from pydantic.json_schema import SkipJsonSchema

from alps_client.config import PipelineConfig
from alps_client.errors import AlpsError

# Left to right: a mapping that is a valid config becomes a PipelineConfig; any other mapping stays as it was
# given (pydantic's default "smart" union would keep every mapping a dict). The mapping is left out of the
# parameter's schema, which stays that of the dataclasses: the UI's form and `alps serve`'s deployment show it.
ConfigParameter = Annotated[PipelineConfig | SkipJsonSchema[dict[str, Any]] | None,
                            pydantic.Field(union_mode="left_to_right")]


def unknown_fields(settings: dict[str, Any], cls: type = PipelineConfig, prefix: str = "config") -> list[str]:
    """A line for each key of ``settings`` that names no field of ``cls``, nested configs included.

    ``'config.amg.bogus: not a setting of config.amg (its settings: points_per_side, ...)'``: pydantic ignores
    such keys, Prefect refused them.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    found = []
    for key, value in settings.items():
        if isinstance(key, bool):  # YAML's `on:`, `no:` keys
            found.append(f"{prefix}.{str(key).lower()}: not a setting of {prefix} (YAML reads a key on, off, yes or "
                         f"no as true or false; its settings: {', '.join(names)})")
        elif key not in names:
            found.append(f"{prefix}.{key}: not a setting of {prefix} (its settings: {', '.join(names)})")
        elif dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            found += unknown_fields(value, hints[key], f"{prefix}.{key}")
    return found


def describe_invalid(err: pydantic.ValidationError, prefix: str = "config") -> str:
    """Pydantic's errors as one line, each field named once with what it accepts and the value it got.

    ``config.cluster.n_clusters: should be a valid integer or 'auto', got 'Auto'``.

    A field of several types (``n_clusters``) gets one error per type from pydantic, each at a location that ends in
    the type's tag (``...n_clusters.literal['auto']``): they are said as one, at the field.
    """
    accepted: dict[str, list[str]] = {}
    given: dict[str, Any] = {}
    lines: dict[str, None] = {}  # in order; a field's location alone stands for its line in ``accepted``
    for e in err.errors():
        where = ".".join([prefix, *map(str, _field_path(e["loc"]))])
        if e["msg"].startswith("Value error, "):  # alps' own checks, which say what they got
            lines[f"{where}: {e['msg'].removeprefix('Value error, ')}"] = None
            continue
        if e["type"] == "dataclass_type":
            msg = f"a mapping of {where}'s settings (left out, their defaults)"
        elif e["msg"].startswith("Input should be "):  # what the field takes: one of a union's, said with the rest
            msg = re.split(r", (?:unable to|got) ", e["msg"].removeprefix("Input should be "))[0]
        else:  # pydantic's own sentence ("Tuple should have at most 2 items ...", "Field required")
            lines[f"{where}: {e['msg']}"] = None
            continue
        accepted.setdefault(where, []).append(msg)
        given[where] = e.get("input")
        lines[where] = None
    return "; ".join(f"{line}: should be {' or '.join(dict.fromkeys(accepted[line]))}, got {_shown(given[line])}"
                     if line in accepted else line for line in lines)


def _field_path(loc: tuple[int | str, ...]) -> list[int | str]:
    """``loc`` of a pydantic error without the tags of a union's types.

    What stays: the config's parts and fields, and positions in a field's value.
    """
    cls: Any = PipelineConfig
    path: list[int | str] = []
    for item in loc:
        fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
        if item in fields:
            path.append(item)
            cls = typing.get_type_hints(cls)[str(item)]
        elif isinstance(item, int) or fields:  # a position in a value; or a name this check does not know
            path.append(item)
    return path


def _shown(value: Any) -> str:
    """``value`` as the file wrote it: null, true, 'text', 3 (shortened)."""
    from alps_client.errors import shortened

    return "null" if value is None else str(value).lower() if isinstance(value, bool) else shortened(repr(value), 60)


def validated_config(value: PipelineConfig | dict[str, Any] | None, what: str = "the run's config",
                     then: str = "correct the run's config and start the run again") -> PipelineConfig | None:
    """``value`` as a :class:`PipelineConfig` (None stays None), validated as Prefect validates parameters.

    ``what`` names it in the error, ``then`` says what to do.

    Raises:
        AlpsError: One line naming each wrong field and what it accepts, and what to do.
    """
    if value is None or isinstance(value, PipelineConfig):
        return value
    if not isinstance(value, dict):
        raise AlpsError(f"{what} must be a mapping of settings such as {{\"amg\": {{\"points_per_side\": 16}}}}, "
                        f"got {type(value).__name__}: {then}")
    problems = unknown_fields(value)
    if not problems:
        try:
            config = pydantic.TypeAdapter(PipelineConfig).validate_python(value)
        except pydantic.ValidationError as err:
            problems = [describe_invalid(err)]
        else:
            problems = truths_taken_for_numbers(value, config.to_dict())
            if not problems:
                return config
    raise AlpsError(f"{what} is not valid: {'; '.join(problems)}; {then}")


def truths_taken_for_numbers(given: Any, validated: Any, prefix: str = "config") -> list[str]:
    """A line for each true or false in ``given`` that pydantic took for a number (1 or 0) of ``validated``.

    Pydantic's lax mode reads ``True`` as 1: YAML's ``sigma: yes`` became a gate of 1.0 (none), ``n_clusters:
    true`` one cluster. ``PipelineConfig.from_dict`` refuses them; so does this.
    """
    if isinstance(given, bool):
        return [] if isinstance(validated, bool) else [
            f"{prefix}: {str(given).lower()} is no number (YAML reads yes, no, on, off, true and false as such)"]
    if isinstance(given, dict) and isinstance(validated, dict):
        return [line for key, item in given.items() if key in validated
                for line in truths_taken_for_numbers(item, validated[key], f"{prefix}.{key}")]
    if isinstance(given, list | tuple) and isinstance(validated, list | tuple) and len(given) == len(validated):
        return [line for i, (item, done) in enumerate(zip(given, validated))
                for line in truths_taken_for_numbers(item, done, f"{prefix}[{i}]")]
    return []
