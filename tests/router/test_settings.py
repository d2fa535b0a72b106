"""Router settings: TOML < environment < flags, and one clear error for any bad or unknown key."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node_agent.router_link import BACKOFF_MAX_S
from node_protocol.wire import REJOIN_S
from router.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_KEYS = "allowed: connect_s, first_byte_s, idle_s, total_s"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "router.toml"
    path.write_text(text)
    return str(path)


class TestPrecedence:
    """Each layer overrides the one before it."""

    def test_toml_env_cli(self, tmp_path: Path) -> None:
        """The CLI beats the environment, which beats the file."""
        cfg = write(
            tmp_path,
            'port = 9000\ndefault_group = "from-file"\nmax_attempts = 5\n'
            '[[groups]]\nname = "g2"\npolicy = "round_robin"\n'
            '[[groups.nodes]]\nname = "s1"\nbase_url = "http://127.0.0.1:1/"\n',
        )
        env = {"ROUTER_PORT": "9100", "ROUTER_DEFAULT_GROUP": "from-env"}
        s = load_settings(["--config", cfg, "--port", "9200"], env)
        assert s.port == 9200
        assert s.default_group == "from-env"
        assert s.max_attempts == 5
        group = s.group("g2")
        assert group is not None
        assert group.policy == "round_robin"
        assert group.nodes[0].base_url == "http://127.0.0.1:1"

    def test_config_path_from_env_and_nested_keys_merge(self, tmp_path: Path) -> None:
        """ROUTER_CONFIG names the file; ROUTER_TIMEOUTS__IDLE_S and a nested flag change one
        bound each and keep the file's others."""
        cfg = write(tmp_path, "[timeouts]\nconnect_s = 1\nidle_s = 7\ntotal_s = 50\n")
        env = {"ROUTER_CONFIG": cfg, "ROUTER_TIMEOUTS__IDLE_S": "9"}
        s = load_settings(["--timeouts.total-s", "60"], env)
        assert (s.timeouts.connect_s, s.timeouts.idle_s, s.timeouts.total_s) == (1, 9, 60)
        assert s.timeouts.first_byte_s == 120.0

    def test_secrets_from_the_environment_are_kept_as_digests(self, tmp_path: Path) -> None:
        """A registration token joins the file's digests; the admin token becomes a digest."""
        listed = hashlib.sha256(b"old-token").hexdigest()
        cfg = write(tmp_path, f'registration_token_sha256 = ["{listed.upper()}"]\n')
        env = {
            "ROUTER_CONFIG": cfg,
            "ROUTER_REGISTRATION_TOKEN": "new-token",
            "ROUTER_ADMIN_TOKEN": "admin-secret",
            "ROUTER_REGISTRATION_ALLOWLIST": "10.0.0.0/8, node.example",
        }
        s = load_settings([], env)
        assert s.registration_token_sha256 == (listed, hashlib.sha256(b"new-token").hexdigest())
        assert s.admin_token_sha256 == hashlib.sha256(b"admin-secret").hexdigest()
        assert s.registration_allowlist == ("10.0.0.0/8", "node.example")
        assert "new-token" not in repr(s)
        assert "admin-secret" not in repr(s)

    def test_api_keys_file_adds_to_inline_keys(self, tmp_path: Path) -> None:
        """Keys from ``ROUTER_API_KEYS_FILE`` come after the file's ``[[api_keys]]``."""
        a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
        keys = tmp_path / "keys"
        keys.write_text(f"# tenants\nbeta:{b}\n")
        cfg = write(tmp_path, f'[[api_keys]]\ntenant = "alpha"\nsha256 = "{a.upper()}"\n')
        s = load_settings(["--config", cfg], {"ROUTER_API_KEYS_FILE": str(keys)})
        assert [(k.tenant, k.sha256) for k in s.api_keys] == [("alpha", a), ("beta", b)]


class TestGroupTimeouts:
    """``[groups.timeouts]`` is read, and inherits what it leaves out from ``[timeouts]``."""

    def test_group_timeouts_are_read_and_inherit_the_rest(self, tmp_path: Path) -> None:
        """A group that sets only first_byte_s keeps the router-wide other bounds."""
        cfg = write(
            tmp_path,
            "[timeouts]\nconnect_s = 2\nfirst_byte_s = 60\n"
            '[[groups]]\nname = "fast"\n[groups.timeouts]\nfirst_byte_s = 0.5\n'
            '[[groups]]\nname = "patient"\n',
        )
        s = load_settings(["--config", cfg], {})
        fast = s.timeouts_for("fast")
        assert (fast.connect_s, fast.first_byte_s, fast.idle_s, fast.total_s) == (2, 0.5, 120, 900)
        assert s.timeouts_for("patient") == s.timeouts
        assert s.timeouts_for("not-configured") == s.timeouts

    def test_a_group_timeout_must_be_positive(self, tmp_path: Path) -> None:
        """A group's bound is validated like the router-wide one, named by its path."""
        cfg = write(tmp_path, '[[groups]]\nname = "g"\n[groups.timeouts]\nidle_s = 0\n')
        with pytest.raises(SettingsError, match=r"groups\[0\]\.timeouts\.idle_s .*greater than 0"):
            load_settings(["--config", cfg], {})


class TestUnknownKeys:
    """A misspelt key at any depth stops start-up with its full path and the allowed keys."""

    @pytest.mark.parametrize(
        ("toml", "path", "allowed"),
        [
            ("prot = 1\n", "prot", "allowed: admin_token_sha256, aliases, api_keys,"),
            ("[timeouts]\nconect_s = 1\n", "timeouts.conect_s", TIMEOUT_KEYS),
            (
                '[[groups]]\nname = "g"\npolcy = "random"\n',
                r"groups\[0\]\.polcy",
                "allowed: name, nodes, policy, prefix_routing, resume, timeouts",
            ),
            (
                '[[groups]]\nname = "g"\n[groups.timeouts]\nconect_s = 1\n',
                r"groups\[0\]\.timeouts\.conect_s",
                TIMEOUT_KEYS,
            ),
            (
                '[[groups]]\nname = "g"\n[[groups.nodes]]\nname = "n"\n'
                'base_url = "http://h:1"\nwieght = 2\n',
                r"groups\[0\]\.nodes\[0\]\.wieght",
                "allowed: base_url, health_url, name, weight",
            ),
            (
                '[[api_keys]]\ntenant = "t"\nsha256 = "00"\nkey = "x"\n',
                r"api_keys\[0\]\.key",
                "allowed: sha256, tenant",
            ),
        ],
    )
    def test_misspelt_key_names_its_path_and_the_allowed_keys(
        self, tmp_path: Path, toml: str, path: str, allowed: str
    ) -> None:
        """Top level, [timeouts], [[groups]], [groups.timeouts], [[groups.nodes]], [[api_keys]]."""
        cfg = write(tmp_path, toml)
        with pytest.raises(SettingsError, match=rf"{path} \(in .*router.toml\): unknown key") as e:
            load_settings(["--config", cfg], {})
        assert allowed in str(e.value)

    def test_plain_secret_in_the_file_is_refused(self, tmp_path: Path) -> None:
        """A plain token belongs in the environment; in the file it is an unknown key."""
        cfg = write(tmp_path, 'admin_token = "secret"\n')
        with pytest.raises(SettingsError, match=r"admin_token .*unknown key"):
            load_settings(["--config", cfg], {})

    def test_unknown_router_variable_is_refused(self) -> None:
        """A misspelt ROUTER_* variable is named, not ignored."""
        with pytest.raises(SettingsError, match="ROUTER_PROT: unknown environment variable"):
            load_settings([], {"ROUTER_PROT": "1"})

    def test_unknown_flag_is_refused(self) -> None:
        """An unknown flag is a SettingsError, not an exit from inside the parser."""
        with pytest.raises(SettingsError, match="--prot"):
            load_settings(["--prot", "1"], {})

    def test_bad_config_stops_python_m_router_with_one_line(self, tmp_path: Path) -> None:
        """``python -m router --config bad.toml`` exits 2 with one line naming the key."""
        cfg = write(tmp_path, '[[groups]]\nname = "g"\n[groups.timeouts]\nconect_s = 1\n')
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ROUTER_")}
        done = subprocess.run(
            [sys.executable, "-m", "router", "--config", cfg],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr.count("\n") == 1
        assert done.stderr.startswith("router: groups[0].timeouts.conect_s (in ")
        assert done.stderr.rstrip().endswith(f"unknown key; {TIMEOUT_KEYS}")


class TestValidation:
    """Bad settings fail at start with a message naming the setting."""

    @pytest.mark.parametrize(
        ("argv", "env", "word"),
        [
            ([], {"ROUTER_PORT": "eighty"}, "port (ROUTER_PORT)"),
            (["--port", "70000"], {}, "port (--port)"),
            (["--max-attempts", "0"], {}, "max_attempts"),
            (["--default-group", "api"], {}, "invalid group name 'api'"),
            (["--default-policy", "fastest"], {}, "default_policy .*must be one of"),
            ([], {"ROUTER_REPORT_INTERVAL_S": "-1"}, "report_interval_s"),
            ([], {"ROUTER_NODE_EXPIRY_S": "0"}, "node_expiry_s"),
            (["--node-expiry-s", "1", "--report-interval-s", "2"], {}, "node_expiry_s must be"),
            (["--tls-cert-file", "c.pem"], {}, "tls_cert_file and tls_key_file go together"),
            (["--log-format", "xml"], {}, "log_format"),
        ],
    )
    def test_bad_values(self, argv: list[str], env: dict[str, str], word: str) -> None:
        """Each invalid value raises SettingsError mentioning what was wrong."""
        with pytest.raises(SettingsError, match=word.replace("(", r"\(").replace(")", r"\)")):
            load_settings(argv, env)

    @pytest.mark.parametrize(
        ("toml", "word"),
        [
            ('[[groups]]\nname = "v1"\n', r"groups\[0\]\.name.*invalid group name 'v1'"),
            ('[[groups]]\nname = "g"\npolicy = "x"\n', r"groups\[0\]\.policy.*must be one of"),
            ('[[groups]]\nname = "g"\n[[groups]]\nname = "g"\n', "each name may appear once"),
            (
                '[[groups]]\nname = "g"\n[[groups.nodes]]\nname = "n"\nbase_url = "h:1"\n',
                r"groups\[0\]\.nodes\[0\]\.base_url.*http\(s\) URL",
            ),
            ('admin_token_sha256 = "plain"\n', "SHA-256"),
            ('[aliases]\nm = "one-name"\n', r"aliases\.m"),
            ("[tenant_weights]\nacme = 0\n", r"tenant_weights\.acme"),
        ],
    )
    def test_bad_file_values(self, tmp_path: Path, toml: str, word: str) -> None:
        """Values deep in the file are checked too, and named by their path."""
        with pytest.raises(SettingsError, match=word):
            load_settings(["--config", write(tmp_path, toml)], {})

    def test_missing_config_file(self, tmp_path: Path) -> None:
        """A config file that is not there is an error, not an empty file."""
        with pytest.raises(SettingsError, match="cannot read config file"):
            load_settings(["--config", str(tmp_path / "nope.toml")], {})


def test_help_lists_each_setting_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` comes from the schema: flags, nested flags, and their descriptions."""
    with pytest.raises(SystemExit) as done:
        load_settings(["--help"], {})
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in (
        "--config str TOML settings file (also ROUTER_CONFIG)",
        "--max-attempts int nodes tried before the first token (default: 3)",
        "--timeouts.first-byte-s float bound on a node's first byte (default: 120.0)",
        "--node-expiry-s float a node that has not reported for this long is removed",
        "ROUTER_REGISTRATION_TOKEN",
    ):
        assert expected in text


def test_resume_is_on_by_default_and_a_group_may_turn_it_off(tmp_path: Path) -> None:
    """Cut streams are resumed unless the router or a group says not to; a group's own setting
    wins over the router-wide one."""
    config = tmp_path / "router.toml"
    config.write_text('[[groups]]\nname = "strict"\nresume = false\n[[groups]]\nname = "plain"\n')
    settings = load_settings(["--config", str(config)], {})
    assert (settings.resume_for("strict"), settings.resume_for("plain")) == (False, True)
    assert settings.resume_for("made-by-a-registration")
    off = load_settings(["--config", str(config)], {"ROUTER_RESUME_STREAMS": "false"})
    assert (off.resume_for("plain"), off.resume_for("strict")) == (False, False)


@pytest.mark.parametrize(("interval", "warmup"), [(0.3, REJOIN_S + 0.3), (2.0, 6.0)])
def test_a_restarted_router_waits_for_agents_that_found_it_down(
    interval: float, warmup: float
) -> None:
    """The warmup (a model no node reported is "starting", not unknown) lasts three report
    intervals, and never less than an agent takes to try a router again after it found it
    down, plus one report interval: with fast reports, agents still backing off from a
    restarted router would otherwise get it answering 404 for a model they serve."""
    settings = load_settings(["--report-interval-s", str(interval)], {})
    assert settings.warmup == pytest.approx(warmup)
    assert settings.warmup >= BACKOFF_MAX_S + interval
    assert load_settings(["--warmup-s", "0"], {}).warmup == 0.0  # as set, when set
