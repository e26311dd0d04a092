"""The re-embed's options, one typed model shared by every way in: ``POST /jobs/reembed`` builds it,
the relay hands its argv to Ray Jobs, ``heimdex reembed`` and ``python -m jobs.reembed`` (which
imports it from here: jobs build on serve_app, never the other way) parse it.

The command line is generated from the fields (name ``to_version`` ↔ flag ``--to-version``), so the
parser and :meth:`ReembedArgs.to_argv` can never disagree.
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ReembedArgs(BaseModel):
    """What one re-embed (or rollback / finalize) does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = Field(None, description="collection:<model>[@<version>] | jsonl:<path> | parquet:<path>")
    model: str = Field(description="registry model to embed with")
    to_version: str | None = Field(None, description="target version (default: the next free one for a new "
                                   "version of the same model, else the tenants' live one)")
    batch_size: int = Field(64, ge=1, le=4096, description="rows per embedding batch")
    concurrency: int | None = Field(None, ge=1, description="embedding actors (default: from the free resources)")
    num_cpus: float | None = Field(None, gt=0, description="CPUs per embedding actor (default: what is free)")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per embedding actor (fractional ok)")
    flush_size: int = Field(256, ge=1, le=4096, description="points per upsert (64-256 recommended)")
    dry_run: bool = Field(False, description="report what would happen; write nothing")
    rollback: bool = Field(False, description="at once: each --org tenant (default: every switched one) back to its "
                           "previous collection (or --to-version's); nothing is embedded")
    finalize: bool = Field(False, description="after a verified re-embed of --org: stop keeping the previous "
                           "collection in step and delete the tenant's points from what it left (previous, mock)")
    placement_timeout_s: float = Field(120.0, gt=0, description="fail, naming the missing resource, if no row is "
                                       "embedded this long after the start")
    job_id: str | None = Field(None, description="jobs row (type reembed) to keep up to date")
    org: list[str] | None = Field(None, description="only this tenant (repeatable)")
    no_switch: bool = Field(False, description="write and verify, but leave each tenant on its live collection")

    def to_argv(self) -> list[str]:
        """The job's command line: every field that differs from its default."""
        out: list[str] = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value == field.default:
                continue
            flag = _flag(name)
            if isinstance(value, bool):
                out.append(flag)
            elif isinstance(value, list):
                for item in value:
                    out += [flag, str(item)]
            else:
                out += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return out

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> ReembedArgs:
        return cls.model_validate({name: getattr(namespace, name) for name in cls.model_fields})

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> ReembedArgs:
        """From a command line; a value out of range exits like any argparse error (status 2)."""
        parser = build_arg_parser()
        try:
            return cls.from_namespace(parser.parse_args(argv))
        except ValidationError as exc:
            parser.error("; ".join(f"{_flag(str(e['loc'][0]))}: {e['msg']}" for e in exc.errors()))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_arg_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command line of :class:`ReembedArgs`; ``heimdex reembed`` uses it as a parent parser."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.reembed", description="Re-embed stored or file rows into a model version.",
        add_help=add_help,
    )
    for name, field in ReembedArgs.model_fields.items():
        kind = _scalar_type(field.annotation)
        options: dict[str, Any] = {"help": field.description, "dest": name}
        if kind is bool:
            options["action"] = "store_true"
        elif kind is list:
            options.update(action="append", default=None)
        else:
            options.update(type=kind, default=field.default, required=field.is_required())
        parser.add_argument(_flag(name), **options)
    return parser


def _scalar_type(annotation: Any) -> type:
    """bool, list, int, float or str from a field annotation such as ``int | None``."""
    if annotation in (bool, int, float, str):
        return annotation
    if getattr(annotation, "__origin__", None) is list:
        return list
    inner = [a for a in get_args(annotation) if a is not type(None)]
    if len(inner) == 1:
        return _scalar_type(inner[0])
    raise TypeError(f"unsupported option type {annotation!r}")
