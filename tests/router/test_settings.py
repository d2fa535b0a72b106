"""Router settings: TOML < environment < CLI, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.settings import SettingsError, load_settings


class TestPrecedence:
    """Each layer overrides the one before it."""

    def test_toml_env_cli(self, tmp_path: Path) -> None:
        """The CLI beats the environment, which beats the file."""
        cfg = tmp_path / "router.toml"
        cfg.write_text(
            'port = 9000\ndefault_group = "from-file"\nmax_attempts = 5\n'
            '[[groups]]\nname = "g2"\npolicy = "round_robin"\n'
            '[[groups.nodes]]\nname = "s1"\nbase_url = "http://127.0.0.1:1"\n'
        )
        env = {"ROUTER_PORT": "9100", "ROUTER_DEFAULT_GROUP": "from-env"}
        s = load_settings(["--config", str(cfg), "--port", "9200"], env)
        assert s.port == 9200
        assert s.default_group == "from-env"
        assert s.max_attempts == 5
        group = s.group("g2")
        assert group is not None
        assert group.policy == "round_robin"
        assert group.nodes[0].base_url == "http://127.0.0.1:1"


class TestValidation:
    """Bad settings fail at start with a message naming the setting."""

    @pytest.mark.parametrize(
        ("argv", "env", "word"),
        [
            ([], {"ROUTER_PORT": "eighty"}, "ROUTER_PORT"),
            (["--max-attempts", "0"], {}, "max_attempts"),
            (["--default-group", "api"], {}, "group name"),
            ([], {"ROUTER_REPORT_INTERVAL_S": "-1"}, "report_interval_s"),
        ],
    )
    def test_bad_values(self, argv: list[str], env: dict[str, str], word: str) -> None:
        """Each invalid value raises SettingsError mentioning what was wrong."""
        with pytest.raises(SettingsError, match=word):
            load_settings(argv, env)

    def test_unknown_key_in_file(self, tmp_path: Path) -> None:
        """A misspelt key in the file is an error, not silently ignored."""
        cfg = tmp_path / "r.toml"
        cfg.write_text("prot = 1\n")
        with pytest.raises(SettingsError, match="prot"):
            load_settings(["--config", str(cfg)], {})
