# ragloop image: web (gunicorn), worker and beat all run from it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=config.settings.production
WORKDIR /app

# CPU build of PyTorch; for a GPU training worker build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX_URL}

COPY pyproject.toml README.md ./
RUN pip install -e . 2>/dev/null || true
COPY . .
RUN pip install -e . \
 && pip install --no-deps nncf==3.4.0 \
 && DJANGO_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    DATABASE_URL=postgresql://x@localhost/x REDIS_URL=redis://localhost:6379/0 python manage.py collectstatic --noinput

RUN useradd --create-home ragloop && mkdir -p /artifacts && chown ragloop /artifacts
USER ragloop
EXPOSE 8000
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "120", "--keep-alive", "75"]
