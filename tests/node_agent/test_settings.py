"""Agent settings: TOML < InferenceNode__* < NODE_AGENT_* < flags, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from node_agent.settings import AgentSettings, SettingsError, load_settings


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


class TestPrecedence:
    """Settings come from TOML, then environment, then CLI flags, the last one winning."""

    def test_toml_alone(self, tmp_path: Path) -> None:
        cfg = write_toml(
            tmp_path,
            'backend_url = "http://toml:8000"\ngroup = "g-toml"\nport = 9001\n'
            'router_urls = ["http://r1:8080", "http://r2:8080/"]\n'
            '[metadata]\ngpu = "A100"\n',
        )
        s = load_settings(["--config", cfg], {})
        assert s.backend_url == "http://toml:8000"
        assert s.group == "g-toml"
        assert s.port == 9001
        assert s.router_urls == ("http://r1:8080", "http://r2:8080")
        assert s.metadata == {"gpu": "A100"}

    def test_env_beats_toml_and_cli_beats_env(self, tmp_path: Path) -> None:
        cfg = write_toml(tmp_path, 'backend_url = "http://toml:8000"\nport = 9001\nweight = 2\n')
        env = {"NODE_AGENT_PORT": "9002", "NODE_AGENT_GROUP": "g-env", "NODE_AGENT_WEIGHT": "3"}
        s = load_settings(["--config", cfg, "--port", "9003"], env)
        assert s.port == 9003
        assert s.group == "g-env"
        assert s.weight == 3.0
        assert s.backend_url == "http://toml:8000"

    def test_config_path_from_env(self, tmp_path: Path) -> None:
        cfg = write_toml(tmp_path, '[node_agent]\nbackend_url = "http://t:1"\n')
        assert load_settings([], {"NODE_AGENT_CONFIG": cfg}).backend_url == "http://t:1"

    def test_cli_router_urls_replace_env_list(self) -> None:
        env = {"NODE_AGENT_BACKEND_URL": "http://b:1", "NODE_AGENT_ROUTER_URLS": "http://x:1"}
        s = load_settings(
            ["--router-url", "http://r1:1", "--router-url", "http://r2:1,http://r3:1"], env
        )
        assert s.router_urls == ("http://r1:1", "http://r2:1", "http://r3:1")

    def test_router_url_variable_and_old_flag_names(self) -> None:
        """NODE_AGENT_ROUTER_URL and the flags' short names (--report-interval, ...) work."""
        env = {"NODE_AGENT_BACKEND_URL": "http://b:1", "NODE_AGENT_ROUTER_URL": "http://r:1/"}
        s = load_settings(
            ["--report-interval", "0.5", "--connect-timeout", "2", "--log-level", "warning"], env
        )
        assert s.router_urls == ("http://r:1",)
        assert (s.report_interval_s, s.connect_timeout_s, s.log_level) == (0.5, 2, "WARNING")

    def test_empty_variable_unsets_an_optional_setting(self, tmp_path: Path) -> None:
        """An empty NODE_AGENT_MAX_PARALLEL or _ADVERTISE_URL means 'not set'."""
        cfg = write_toml(
            tmp_path, 'backend_url = "http://b:1"\nmax_parallel = 4\nadvertise_url = "http://a:1"\n'
        )
        env = {"NODE_AGENT_MAX_PARALLEL": "", "NODE_AGENT_ADVERTISE_URL": ""}
        s = load_settings(["--config", cfg], env)
        assert (s.max_parallel, s.advertise_url) == (None, None)

    def test_cli_metadata_pairs(self) -> None:
        s = load_settings(
            ["--backend-url", "http://b:1", "--metadata", "gpu=A100", "--metadata", "region=eu"],
            {},
        )
        assert s.metadata == {"gpu": "A100", "region": "eu"}


class TestSeedVariables:
    """Octopus's ASP.NET-style InferenceNode__* variables configure the agent."""

    def test_backend_group_and_router(self) -> None:
        env = {
            "InferenceNode__BackendUrl": "http://localhost:11434",
            "InferenceNode__GroupName": "inference-cluster",
            "InferenceNode__RouterUrl": "http://router:8080",
        }
        s = load_settings([], env)
        assert s.backend_url == "http://localhost:11434"
        assert s.group == "inference-cluster"
        assert s.router_urls == ("http://router:8080",)

    def test_keys_are_case_insensitive_and_node_agent_vars_win(self) -> None:
        env = {
            "INFERENCENODE__BACKENDURL": "http://seed:1",
            "NODE_AGENT_BACKEND_URL": "http://agent:1",
            "inferencenode__groupname": "g-seed",
        }
        s = load_settings([], env)
        assert s.backend_url == "http://agent:1"
        assert s.group == "g-seed"


class TestValidation:
    """Bad settings fail at start with a message naming the setting."""

    @pytest.mark.parametrize(
        ("overrides", "fragment"),
        [
            ({"backend_url": "localhost:11434"}, "backend_url"),
            ({"backend_kind": "sglang"}, "backend_kind"),
            ({"backend_metrics_url": "host:8002/metrics"}, "backend_metrics_url"),
            ({"gpu_source": "rocm"}, "gpu_source"),
            ({"router_urls": ("ftp://r",)}, "router_urls"),
            ({"port": 70000}, "port"),
            ({"weight": 0}, "weight"),
            ({"report_interval_s": 0}, "report_interval_s"),
            ({"idle_timeout_s": -1}, "idle_timeout_s"),
            ({"group": "bad group/"}, "group"),
            ({"total_timeout_s": 10, "first_byte_timeout_s": 20}, "total_timeout_s"),
        ],
    )
    def test_rejects(self, overrides: dict[str, object], fragment: str) -> None:
        values: dict[str, object] = {"backend_url": "http://b:1"} | overrides
        with pytest.raises(ValidationError, match=fragment):
            AgentSettings(**values)  # type: ignore[arg-type]

    def test_missing_backend_url(self) -> None:
        with pytest.raises(SettingsError, match="backend_url is required"):
            load_settings([], {})

    def test_unknown_env_variable(self) -> None:
        """A misspelt NODE_AGENT_* variable is named, with the variables there are."""
        with pytest.raises(SettingsError, match="NODE_AGENT_BOGUS: unknown environment") as e:
            load_settings(["--backend-url", "http://b:1"], {"NODE_AGENT_BOGUS": "1"})
        assert "NODE_AGENT_BACKEND_URL" in str(e.value)

    @pytest.mark.parametrize("table", ["", "[node_agent]\n"])
    def test_misspelt_config_key_names_the_allowed_keys(self, tmp_path: Path, table: str) -> None:
        """A misspelt key in the agent's file, at the top or under [node_agent], is refused
        with the keys there are."""
        cfg = write_toml(tmp_path, f'{table}backend_url = "http://b:1"\nreport_intervall_s = 1\n')
        with pytest.raises(SettingsError, match=r"report_intervall_s \(in .*\): unknown key") as e:
            load_settings(["--config", cfg], {})
        assert "allowed: advertise_url, backend_api_key, backend_kind," in str(e.value)
        assert "report_interval_s," in str(e.value)

    def test_unknown_flag(self) -> None:
        """An unknown flag is a SettingsError naming it."""
        with pytest.raises(SettingsError, match="--bogus"):
            load_settings(["--backend-url", "http://b:1", "--bogus", "1"], {})

    def test_non_numeric_env(self) -> None:
        """A value that is not a number names its variable and the problem."""
        with pytest.raises(SettingsError, match=r"port \(NODE_AGENT_PORT\): .*valid integer"):
            load_settings([], {"NODE_AGENT_BACKEND_URL": "http://b:1", "NODE_AGENT_PORT": "x"})

    def test_bad_seed_variable_names_it(self) -> None:
        """A bad InferenceNode__BackendUrl is named as the operator wrote it."""
        with pytest.raises(SettingsError, match=r"backend_url \(InferenceNode__BackendUrl\)"):
            load_settings([], {"InferenceNode__BackendUrl": "localhost:11434"})

    def test_defaults(self) -> None:
        s = AgentSettings(backend_url="http://b:1/")
        assert s.backend_url == "http://b:1"
        assert (s.backend_kind, s.group, s.host, s.port) == (
            "auto",
            "inference-cluster",
            "0.0.0.0",
            8090,
        )
        assert s.router_urls == ()
        assert s.advertise_url is None
        assert s.name


def test_help_lists_each_setting_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` comes from the schema, with the flags' short names beside the long ones."""
    with pytest.raises(SystemExit) as done:
        load_settings(["--help"], {})
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in (
        "--backend-url str the backend's base URL (required)",
        "--report-interval-s float, --report-interval float how often the agent reports",
        "--router-urls tuple[str,...], --router-url tuple[str,...] routers to register with",
        "InferenceNode__BackendUrl",
    ):
        assert expected in text
