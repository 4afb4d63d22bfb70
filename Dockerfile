# Airflow image with this project installed from the same lock file `make` uses.
FROM apache/airflow:3.3.2-python3.11
USER root
COPY --chown=airflow:root . /opt/audiences
USER airflow
WORKDIR /opt/audiences
RUN pip install --no-cache-dir uv==0.13.9 \
 && uv export --frozen --no-dev --no-hashes --no-emit-project -o /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt "apache-airflow-providers-celery" "psycopg2-binary" \
 && pip install --no-cache-dir --no-deps -e /opt/audiences
