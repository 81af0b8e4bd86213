def pytest_configure(config):
    # Registered here as well so this directory runs without the project config.
    config.addinivalue_line("markers", "vm: boots a QEMU VM through scripts/vm-test (slow)")
