"""`python -m schedctl` is the `schedctl` command."""

from schedctl.cli import main

if __name__ == "__main__":
    main()
