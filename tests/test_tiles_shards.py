"""Sharded tile builds: 2 shard processes plus a merge give the store one process builds, byte for
byte; shards come from --shard or the launchers' environment variables.

Real views of the tiny random-weight bundle over the test GeoTIFF, on a 3-level region (273 views).
The Ray builds are compared with the same reference in test_ray_jobs.py.
"""
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import bundle, geotiff, rt_base, store32  # noqa: F401

from jzi.runtime import tiles as T
from jzi.runtime.shards import ShardError, parse_shard, resolve_shard, shard_chunks, shard_from_env

CHUNK = 64  # 273 views -> 5 chunks


def _layout(bundle, geotiff):  # noqa: F811
    _, layout = T.plan_build(bundle, chunk_rows=CHUNK, thumb_px=8, source=geotiff)
    return replace(layout, region=replace(layout.region, steps=3))


def _build_local(out, bundle, geotiff, shard=(0, 1), layout=None):  # noqa: F811
    """One worker rendering then encoding each batch on one thread (jzi-tiles build overlaps the two: see
    test_the_pipelined_build_writes_what_render_then_encode_writes), on the small region by default."""
    from jzi.runtime.backends import open_backend
    from jzi.runtime.bundle import load_manifest
    from jzi.runtime.imagery import open_source

    layout = layout or _layout(bundle, geotiff)
    engine = open_backend(bundle, load_manifest(bundle), "ort-cpu", threads=1, graphs=("view_encoder",))
    src = open_source(geotiff)

    def produce(rows):
        views = T.render_views(src, layout.region, rows)
        return engine.encode_views(views), views

    return T.write_store(out, layout.region, layout.dim, layout.encoder_id, produce, thumb_px=layout.thumb_px,
                         batch=16, chunk_rows=CHUNK, meta=layout.meta, progress=False, shard=shard)


def _arrays(store):
    store = Path(store)
    return {name: (store / name).read_bytes() for name in ("embeddings.f16", "pixels.u8")}


def _index_without_time(store):
    meta = json.loads((Path(store) / "tiles.json").read_text())
    meta.pop("created")
    return meta


@pytest.fixture(scope="module")
def reference(tmp_path_factory, bundle, geotiff):  # noqa: F811
    out = _build_local(tmp_path_factory.mktemp("ref") / "single.jzt", bundle, geotiff)
    assert T.verify_store(out)["ok"]
    return out


# ---------------------------------------------------------------------------------------------
# shards: no dependency beyond the runtime
# ---------------------------------------------------------------------------------------------
def test_shard_specs_and_launcher_environments():
    assert parse_shard("1/4") == (1, 4) and resolve_shard(None, {}) == (0, 1)
    assert shard_from_env({"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
                           "SLURM_ARRAY_TASK_COUNT": "2"}) == (1, 2)
    assert shard_from_env({"JOB_COMPLETION_INDEX": "0", "WORLD_SIZE": "2"}) == (0, 2)
    assert resolve_shard("0/1", {"RANK": "1", "WORLD_SIZE": "2"}) == (0, 1)  # the flag wins
    for bad in ("3/3", "a/b", "1", "-1/2"):
        with pytest.raises(ShardError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ShardError, match="WORLD_SIZE"):
        shard_from_env({"JOB_COMPLETION_INDEX": "1"})
    assert shard_chunks(5, (1, 2)) == [1, 3] and shard_chunks(5, (0, 1)) == [0, 1, 2, 3, 4]


def test_two_shard_processes_then_merge_equal_one_process(tmp_path, reference, bundle, geotiff):  # noqa: F811
    out = tmp_path / "sharded.jzt"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_tiles_shards import _build_local
        i = int(sys.argv[1])
        assert _build_local(Path({str(out)!r}), Path({str(bundle)!r}), Path({str(geotiff)!r}), shard=(i, 2)) is None
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert not out.exists()
    partial = tmp_path / "sharded.jzt.partial"
    assert sorted(int(p.name) for p in (partial / "done").iterdir()) == [0, 1, 2, 3, 4]
    T.finalize_store(out)
    assert _arrays(out) == _arrays(reference)
    assert _index_without_time(out) == _index_without_time(reference)
    assert T.verify_store(out)["ok"] and not partial.exists()


def test_merge_refuses_missing_chunks_and_index_has_block_checksums(tmp_path, reference, bundle, geotiff):  # noqa: F811
    out = tmp_path / "half.jzt"
    assert _build_local(out, bundle, geotiff, shard=(1, 2)) is None
    with pytest.raises(T.TileStoreError, match=r"3 of 5 chunks are not built yet \(chunks 0, 2, 4\)"):
        T.finalize_store(out)
    # the final pass without a shard does only the rest, then merges
    assert _build_local(out, bundle, geotiff) == out
    assert _arrays(out) == _arrays(reference)
    emb = json.loads((out / "tiles.json").read_text())["files"]["embeddings"]
    raw = np.fromfile(out / "embeddings.f16", dtype="<f2").reshape(273, -1)
    assert emb["block_rows"] == T.block_rows_for(raw[0].nbytes)
    assert T.block_digests(raw, emb["block_rows"]) == emb["block_sha256"]
    with pytest.raises(T.TileStoreError, match="no build in progress"):
        T.finalize_store(tmp_path / "nothing.jzt")


def test_the_pipelined_build_writes_what_render_then_encode_writes(tmp_path, bundle, geotiff):  # noqa: F811
    """build_store (what jzi-tiles build runs: views rendered on a side thread ahead of the encoder, chunks
    written there too) against rendering then encoding on one thread: the same bytes, on every 16th chunk
    of the tiny model's full region (real views, real encoder)."""
    _, layout = T.plan_build(bundle, chunk_rows=CHUNK, thumb_px=8, source=geotiff)
    shard = (3, 16)
    assert T.build_store(tmp_path / "piped.jzt", bundle, geotiff, backend="ort-cpu", threads=1, batch=16,
                         chunk_rows=CHUNK, thumb_px=8, shard=shard, progress=False) is None
    assert _build_local(tmp_path / "one.jzt", bundle, geotiff, shard=shard, layout=layout) is None
    piped, one = tmp_path / "piped.jzt.partial", tmp_path / "one.jzt.partial"
    mine = [f"{c:08d}" for c in shard_chunks(layout.n_chunks, shard)]
    assert len(mine) == 5 and sorted(os.listdir(piped / "done")) == sorted(os.listdir(one / "done")) == mine
    assert _arrays(piped) == _arrays(one)
    emb = np.fromfile(piped / "embeddings.f16", dtype="<f2").reshape(layout.region.total_views, -1)
    start, stop = layout.chunk_range(3)
    assert np.isfinite(emb[start:stop]).all() and np.abs(emb[start:stop]).sum(axis=1).min() > 0  # really written


@pytest.mark.slow
def test_cli_shards_from_flag_and_environment_then_merge(tmp_path, bundle, geotiff, store32):  # noqa: F811
    """The full tiny region (4369 views) through the jzi-tiles command line, as a Slurm array would run it;
    the same encoder batches as the store32 fixture's build, so the same bytes."""
    out = tmp_path / "cli.jzt"
    cmd = [sys.executable, "-m", "jzi.runtime.tiles_cli", "build", "--engine", str(bundle), "--source", str(geotiff),
           "-o", str(out), "--dtype", "fp32", "--chunk-rows", "512", "--batch", "64", "--threads", "1", "--quiet"]
    envs = [{"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "2"},
            {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "2"}]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **e})
             for e in envs]
    for i, p in enumerate(procs):
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        assert f"shard {i}/2" in stdout and "jzi-tiles merge" in stdout
    r = subprocess.run([sys.executable, "-m", "jzi.runtime.tiles_cli", "merge", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "4369 views" in r.stdout, r.stderr
    assert (out / "embeddings.f32").read_bytes() == (store32 / "embeddings.f32").read_bytes()
