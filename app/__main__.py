"""``python -m app``: serve archplay (see ``app.main``)."""

from app.main import main

if __name__ == "__main__":
    main()
