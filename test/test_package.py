"""package.xml declares, by rosdep key, everything the package's code imports, so that
``rosdep install --from-paths src`` followed by ``colcon build`` gives a working node."""
from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET

import yaml
from helpers_ros import REPO

# The rosdep key of each third-party module the code imports.  ROS packages are keyed by
# their own names; Python packages by rosdistro's rosdep/python.yaml keys.
MODULE_KEYS = {
    "rclpy": "rclpy", "rcl_interfaces": "rcl_interfaces", "sensor_msgs": "sensor_msgs",
    "std_msgs": "std_msgs", "diagnostic_msgs": "diagnostic_msgs",
    "lifecycle_msgs": "lifecycle_msgs", "ament_index_python": "ament_index_python",
    "launch": "launch", "launch_ros": "launch_ros",
    "numpy": "python3-numpy", "yaml": "python3-yaml", "torch": "python3-torch",
    "PIL": "python3-pil", "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib",
    "safetensors": "python3-safetensors-pip", "onnxruntime": "python3-onnxruntime-pip",
    "onnx": "python3-onnx-pip", "rosbags": "python3-rosbags-pip", "cv2": "python3-opencv",
    "mcap": "python3-mcap-pip", "openvino": "python3-openvino-pip",
}
# Python keys present in ros/rosdistro rosdep/python.yaml (checked 2026-08, commit 8468e88):
# the distribution's own, and pip keys where no distribution package exists.
ROSDISTRO_PYTHON_KEYS = {
    "python3-numpy", "python3-yaml", "python3-torch", "python3-pil", "python3-tqdm",
    "python3-matplotlib", "python3-onnxruntime-pip", "python3-rosbags-pip", "python3-pytest",
    "python3-hypothesis", "python3-opencv",
}
OWN = {"dfanet_model", "dfanet_ros", "dfanet_tools", "dfanet", "helpers_ros"}


def imported_modules() -> dict[str, str]:
    """Top-level third-party modules imported anywhere in the shipped code -> a file."""
    files = [*REPO.glob("dfanet_ros/**/*.py"), *REPO.glob("dfanet_model/**/*.py"),
             *REPO.glob("dfanet_tools/**/*.py"),
             REPO / "launch" / "segment.launch.py", REPO / "scripts" / "segmentation_node"]
    found: dict[str, str] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root not in sys.stdlib_module_names and root not in OWN:
                    found.setdefault(root, path.name)
    return found


def declared(kinds: tuple[str, ...]) -> set[str]:
    root = ET.parse(REPO / "package.xml").getroot()
    return {e.text.strip() for kind in kinds for e in root.iter(kind)}


def test_every_import_has_a_declared_run_dependency():
    run = declared(("depend", "exec_depend"))
    for module, where in imported_modules().items():
        assert module in MODULE_KEYS, f"{where} imports {module}: add its rosdep key here " \
                                      "and to package.xml"
        assert MODULE_KEYS[module] in run, f"{where} imports {module}: package.xml lacks " \
                                           f"<exec_depend>{MODULE_KEYS[module]}</exec_depend>"
    # The messages and the Python packages the requirements name are all covered.
    assert {"safetensors", "onnxruntime", "rosbags", "torch"} <= set(imported_modules())


def test_every_python_key_resolves():
    """Each Python key is rosdistro's or defined in the shipped rosdep.yaml."""
    ours = yaml.safe_load((REPO / "rosdep.yaml").read_text())
    keys = {k for k in declared(("depend", "exec_depend", "test_depend"))
            if k.startswith("python3-")}
    unresolved = keys - ROSDISTRO_PYTHON_KEYS - set(ours)
    assert not unresolved, f"no rosdep definition for {unresolved}"
    assert set(ours) <= keys, "rosdep.yaml defines keys package.xml does not use"
    for key, platforms in ours.items():
        assert key.endswith("-pip") and "ubuntu" in platforms, key
        packages = {tuple(p["pip"]["packages"]) for p in platforms.values()}
        assert len(packages) == 1, key


def test_layers_import_only_downwards():
    """dfanet_model (the library) never names the node package, ROS or the tools, not even in
    a lazy import or a module-name string; dfanet_ros never imports the tools; the engine
    never imports rclpy; the node's names and parameters need neither rclpy nor torch."""
    above = {"dfanet_model": ("dfanet_ros", "dfanet_tools", "rclpy"),
             "dfanet_ros": ("dfanet_tools",), "dfanet_ros/engine.py": ("rclpy",),
             # the names and the parameter table, read by the launch file and the tools
             "dfanet_ros/topics.py": ("rclpy", "torch"),
             "dfanet_ros/dds_profile.py": ("rclpy", "torch"),
             "dfanet_ros/parameters.py": ("rclpy", "torch")}
    offenders = []
    for package, forbidden in above.items():
        paths = [REPO / package] if package.endswith(".py") else REPO.glob(f"{package}/**/*.py")
        for path in sorted(paths):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names = [node.value]
                else:
                    continue
                offenders += [f"{path.name}: {n}" for n in names
                              if any(n == f or n.startswith(f + ".") for f in forbidden)]
    # The library does not even mention what sits above it, in comments or docstrings.
    for path in sorted(REPO.glob("dfanet_model/**/*.py")):
        offenders += [f"{path.name} mentions {m}" for m in re.findall(
            r"\b(dfanet_ros|dfanet_tools|rclpy)\b", path.read_text())]
    assert not offenders


def test_tools_run_the_node_without_importing_it():
    """The tools start the node as a process; importing its module would load rclpy (and the
    node) for a name: the names live in dfanet_ros.topics."""
    offenders = []
    for path in sorted(REPO.glob("dfanet_tools/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names
                          if n.startswith("dfanet_ros.segmentation_node")]
    assert not offenders


def module_imports() -> dict[str, set[str]]:
    """Each module of the three packages -> the package modules it imports, at any level
    (a lazy import inside a function still ties the two modules together)."""
    modules = {}
    for package in ("dfanet_model", "dfanet_ros", "dfanet_tools"):
        for path in REPO.glob(f"{package}/**/*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = (path, parts[-1] == "__init__")
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(p for p in (base, node.module or "") if p)
                # ``from package import module`` names the module, else the package
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                           for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
    return graph


def test_no_import_cycles():
    """No module imports one that imports it back, however indirectly (cycles hide shared
    types in the wrong module and break with the first top-level import)."""
    graph, cycles = module_imports(), []
    index: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        index[module] = len(path)
        path.append(module)
        for target in sorted(graph[module]):
            if target in path:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in index:
                visit(target, path)
        path.pop()

    for module in sorted(graph):
        if module not in index:
            visit(module, [])
    assert len(graph) > 50 and graph["dfanet_tools.bag.evaluate"]
    assert not cycles, "\n".join(cycles)


def test_one_version_everywhere():
    """dfanet_model/version.py is the version; the files that must spell it out agree."""
    import re

    import dfanet_ros
    from dfanet_model.version import __version__

    root = ET.parse(REPO / "package.xml").getroot()
    setup = re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text())
    assert setup and setup.group(1) == __version__
    assert root.findtext("version") == __version__ == dfanet_ros.__version__


def test_every_script_the_documents_name_exists():
    """README, BENCHMARKS, the model card, CI and the scripts name scripts by path: each
    exists (scripts/ holds what users run, scripts/bench/ the measurements)."""
    import re

    documents = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / ".ci" / "run",
                 REPO / "dfanet_model" / "data" / "dfanet_camvid.md",
                 *REPO.glob("scripts/**/*.sh"), *REPO.glob("scripts/**/*.py"),
                 *REPO.glob("config/*.yaml")]
    named = {(doc.name, m) for doc in documents
             for m in re.findall(r"\bscripts/[\w/.-]*\w", doc.read_text())}
    assert len(named) > 10
    missing = sorted(f"{doc}: {path}" for doc, path in named if not (REPO / path).exists())
    assert not missing
