from __future__ import annotations

from pathlib import Path

import pytest

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

    def test_cli_metadata_pairs(self) -> None:
        s = load_settings(
            ["--backend-url", "http://b:1", "--metadata", "gpu=A100", "--metadata", "region=eu"],
            {},
        )
        assert s.metadata == {"gpu": "A100", "region": "eu"}


class TestSeedVariables:
    """The seed's ASP.NET-style InferenceNode__* variables configure the agent."""

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
            ({"backend_kind": "llamacpp"}, "backend_kind"),
            ({"backend_metrics_url": "host:8002/metrics"}, "backend_metrics_url"),
            ({"gpu_source": "rocm"}, "gpu_source"),
            ({"router_urls": ("ftp://r",)}, "router URL"),
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
        with pytest.raises(SettingsError, match=fragment):
            AgentSettings(**values)  # type: ignore[arg-type]

    def test_missing_backend_url(self) -> None:
        with pytest.raises(SettingsError, match="backend_url is required"):
            load_settings([], {})

    def test_unknown_env_variable_and_toml_key(self, tmp_path: Path) -> None:
        with pytest.raises(SettingsError, match="NODE_AGENT_BOGUS"):
            load_settings(["--backend-url", "http://b:1"], {"NODE_AGENT_BOGUS": "1"})
        cfg = write_toml(tmp_path, 'backend_url = "http://b:1"\nbogus = 1\n')
        with pytest.raises(SettingsError, match="bogus"):
            load_settings(["--config", cfg], {})

    def test_non_numeric_env(self) -> None:
        with pytest.raises(SettingsError, match="port must be a number"):
            load_settings([], {"NODE_AGENT_BACKEND_URL": "http://b:1", "NODE_AGENT_PORT": "x"})

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
