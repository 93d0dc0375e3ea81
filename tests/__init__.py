"""The test suite, in folders that mirror the packages."""
