"""``python -m archplay.app``: serve the page (see ``archplay.app.main``)."""

from archplay.app.main import main

if __name__ == "__main__":
    main()
