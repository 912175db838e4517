"""The package version, in a module of its own: checkpoint.py stamps it into every model card
it writes, and the package's ``__init__`` imports checkpoint.py (setup.py, package.xml and the
node package repeat it; test_package.py holds them to it)."""
__version__ = "0.1.0"
