import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()

# The rate page's own calls are answered before Django's request handling (the rest as usual).
from annotation.fastpath import RatingFastPath  # noqa: E402  (needs the apps loaded)

application = RatingFastPath(application)
