# One image for web, workers and beat. On a GPU host the same image runs the gpu worker:
# torch==2.13.0 from the registry is the CUDA build, and EGL renders on the GPU.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=config.settings

RUN apt-get update \
 && apt-get install -y --no-install-recommends libosmesa6 libegl1 libgl1 ffmpeg \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install -r requirements.txt \
 && pip install --no-deps -r requirements-nodeps.txt

COPY . .
RUN useradd --create-home --uid 1000 backchannel \
 && mkdir -p /app/var && chown -R backchannel /app/var
USER backchannel

# collectstatic needs settings that load; the real SECRET_KEY comes from the environment at run time.
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput -v 0

EXPOSE 8000
# gthread workers: kept-alive connections for the rate page's calls and media (the rating
# benchmark's fastest gunicorn configuration).
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--workers", "4", "--threads", "8", "--access-logfile", "-"]
