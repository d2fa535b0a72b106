"""``python -m bench overhead --baseline REV``: another revision's router runs beside this one,
from that revision's own files, and answers on the same paths."""

from __future__ import annotations

import subprocess
from pathlib import Path

import aiohttp
import pytest

from bench.baseline import REPO, BaselineError, unpack
from bench.cluster import Process
from bench.topology import NodeSettings, node_paths

pytestmark = pytest.mark.skipif(
    subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode
    != 0,
    reason="not a git checkout",
)


class TestUnpack:
    def test_the_revisions_files_are_written(self, tmp_path: Path) -> None:
        tree = unpack("HEAD", tmp_path)
        committed = subprocess.run(
            ["git", "-C", str(REPO), "show", "HEAD:router/dispatch.py"],
            check=True,
            capture_output=True,
        ).stdout
        assert (tree / "router" / "dispatch.py").read_bytes() == committed

    def test_an_unknown_revision_is_a_clear_error(self, tmp_path: Path) -> None:
        with pytest.raises(BaselineError, match="no-such-revision"):
            unpack("no-such-revision", tmp_path)


class TestSource:
    async def test_the_child_imports_from_the_given_tree(self, tmp_path: Path) -> None:
        package = tmp_path / "whoami"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "__main__.py").write_text(
            "import whoami\nprint('whoami READY', whoami.__file__, flush=True)\n"
        )
        child = await Process.start("whoami", "whoami", [], source=tmp_path)
        try:
            assert Path(child.url).parent == package
        finally:
            await child.stop()


class TestBaselinePaths:
    async def test_both_routers_answer_on_their_own_paths(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The logs folder (where the routers' config is written) given relative to the working
        directory, as ``python -m bench overhead`` gives it: the baseline, started in its own
        tree, still finds its config."""
        tree = unpack("HEAD", tmp_path / "tree")
        monkeypatch.chdir(tmp_path)
        node = NodeSettings(tok_s=2000.0, slots=16)
        body = {"model": node.model, "prompt": "hi", "max_tokens": 4}
        async with (
            node_paths(node, Path("logs"), agent=False, references=False, baseline=tree) as topo,
            aiohttp.ClientSession() as session,
        ):
            assert topo.bases["baseline"] != topo.bases["router"]
            for path in ("router", "baseline", "baseline 16 nodes"):
                async with session.post(f"{topo.bases[path]}/completions", json=body) as resp:
                    assert resp.status == 200, path
                    assert (await resp.json())["choices"][0]["text"]
