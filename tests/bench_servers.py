"""Contenders for the side-by-side harness's tests: each run reports a fixed time and logs its turn."""
import os


def fixed(params: dict):
    def run() -> dict:
        with open(params["log"], "a") as f:
            f.write(f"{params['name']} {os.getpid()}\n")
        return {"ms": float(params["ms"])}

    return run


def broken(params: dict):
    raise RuntimeError("this contender cannot load")
