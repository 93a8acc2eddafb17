"""Splitting work into numbered chunks and the chunks among shards (independent processes).

Chunk ``c`` belongs to shard ``i`` of ``N`` when ``c % N == i``: round robin, so every shard gets a
share of every level of a tile store (deep levels are cheap to render, shallow ones are not).

A shard comes from ``--shard i/N`` or, when that is not given, from the environment of the usual
launchers, so one command line serves them all with no extra dependency:

    RANK / WORLD_SIZE                          torchrun, most MPI-style launchers
    SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT   Slurm array jobs (ids counted from SLURM_ARRAY_TASK_MIN)
    JOB_COMPLETION_INDEX / WORLD_SIZE          Kubernetes indexed Jobs (set WORLD_SIZE to .spec.completions)
"""
from __future__ import annotations

import os
from typing import Mapping


class ShardError(ValueError):
    """A shard that cannot be used, with one line saying why."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ShardError(f"--shard expects INDEX/COUNT like 0/4, got {text!r}") from None
    return _checked(i, n, f"--shard {text}")


def _checked(i: int, n: int, what: str) -> tuple[int, int]:
    if n < 1 or not 0 <= i < n:
        raise ShardError(f"{what}: the index must be in 0..COUNT-1 and COUNT at least 1")
    return i, n


def _int_env(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ShardError(f"environment variable {key}={env[key]!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The shard the launcher's environment describes, or None outside a launcher."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        i = _int_env(env, "SLURM_ARRAY_TASK_ID") - (_int_env(env, "SLURM_ARRAY_TASK_MIN")
                                                    if "SLURM_ARRAY_TASK_MIN" in env else 0)
        return _checked(i, _int_env(env, "SLURM_ARRAY_TASK_COUNT"), "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    for index_key in ("RANK", "JOB_COMPLETION_INDEX"):
        if index_key in env:
            if "WORLD_SIZE" not in env:
                raise ShardError(f"{index_key} is set but WORLD_SIZE is not: set it to the number of shards "
                                 f"or pass --shard INDEX/COUNT")
            return _checked(_int_env(env, index_key), _int_env(env, "WORLD_SIZE"), f"{index_key}/WORLD_SIZE")
    return None


def resolve_shard(spec: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``--shard`` if given, else the launcher's environment, else the whole job (0, 1)."""
    if spec:
        return parse_shard(spec)
    return shard_from_env(env) or (0, 1)


def shard_chunks(n_chunks: int, shard: tuple[int, int]) -> list[int]:
    i, n = shard
    return list(range(i, n_chunks, n))
