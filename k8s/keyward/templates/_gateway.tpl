{{/*
The two containers of a gateway pod. They share a network namespace (Envoy reaches authz's metrics on
127.0.0.1), the "sockets" emptyDir (authz's gRPC socket, Envoy's control socket) and the "outcomes"
emptyDir (Envoy's audit log), and nothing else:

  * envoy mounts the provider key Secret ("provider-keys") and has no database or Keyward secret; its
    admin interface is a 0600 Unix socket in the "envoy-admin" emptyDir, which no other container mounts;
  * authz has the database URL and the token hash key and never mounts or references the provider keys.

They run as different UIDs (gateway.envoy.runAsUser, gateway.authz.runAsUser) with one primary group
(podSecurityContext.runAsGroup), which is also the pod's fsGroup. Everything each one owns is private to
it except these, which they share through that group:

  * authz.sock, authz's gRPC socket: authz runs with umask 007, so the socket it binds is 0660;
  * envoy-control.sock, where authz asks Envoy to reopen its logs: Envoy sets its mode to 0660 (the
    listener's pipe mode), and it routes POST /reopen_logs to the admin socket and nothing else;
  * the audit log, envoy-audit.jsonl in "outcomes": Envoy creates it with mode 0644 less its umask and
    runs with umask 027, so it is 0640: group-readable, never writable by authz. Authz rotates it by
    renaming it to envoy-audit.jsonl.1 and later deletes that; both change the directory, not the
    file, so they need write access to the directory alone. The kubelet gives an emptyDir the fsGroup
    as its group with rwx and the setgid bit (files made in it keep that group), and a disk-backed
    emptyDir has no sticky bit. "outcomes" must stay disk-backed: a medium Memory emptyDir is a tmpfs
    whose root is sticky (1777), where only a file's owner may rename or delete it, so authz could
    not rotate Envoy's file.
*/}}

{{- define "keyward.gateway.envoyContainer" -}}
- name: envoy
  image: {{ include "keyward.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  # umask 027: the audit log Envoy creates is readable by authz (its group) and by nobody else.
  # "$@" is the args below, after the kubelet has expanded $(POD_NAME).
  command: ["/bin/sh", "-c", 'umask 027 && exec {{ include "keyward.venv" . }}/bin/envoy "$@"', envoy]
  args:
    - --config-path
    - {{ include "keyward.envoyConfigDir" . }}/envoy.yaml
    - --service-node
    - $(POD_NAME)
    - --service-cluster
    - {{ include "keyward.fullname" . }}-gateway
    - --disable-hot-restart
    - --concurrency
    - {{ .Values.gateway.envoy.concurrency | int64 | quote }}
    - --log-level
    - {{ .Values.gateway.envoy.logLevel | quote }}
    # Envoy's own log as JSON lines in Keyward's log schema (controlplane/logging.py ENVOY_LOG_FORMAT).
    - --log-format
    - '{"time":"%Y-%m-%dT%H:%M:%S.%f%z","level":"%l","process":"envoy","event":"%j","logger":"%n","thread":%t}'
    - --drain-time-s
    - {{ .Values.gateway.drainSeconds | int64 | quote }}
    - --drain-strategy
    - gradual
    # Log lines reach their files within 10 ms (Envoy's default is 10 s): the audit log is the record
    # of what each request became, and an Envoy that is killed loses what it has not written.
    - --file-flush-interval-msec
    - "10"
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
  ports:
    - name: gateway
      containerPort: {{ .Values.gateway.port | int64 }}
      protocol: TCP
    - name: ops
      containerPort: {{ .Values.gateway.opsPort | int64 }}
      protocol: TCP
  readinessProbe:
    httpGet:
      path: /ready
      port: ops
    periodSeconds: 5
    timeoutSeconds: 2
    failureThreshold: 2
  # Alive while a worker thread (the ops listener) and the main thread (the admin's /ready behind it)
  # both answer. A TCP connect alone would also pass for a hung Envoy: the kernel accepts for it.
  livenessProbe:
    httpGet:
      path: /ready
      port: ops
    initialDelaySeconds: 5
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  lifecycle:
    preStop:
      exec:
        # Keep serving while the endpoint is removed, then drain gracefully through the admin socket
        # (new connections are refused once the drain ends; open streams get drainSeconds to finish).
        command:
          - {{ include "keyward.venv" . }}/bin/python
          - -c
          - >-
            import socket, sys, time;
            time.sleep({{ .Values.gateway.preStopSleepSeconds | int64 }});
            admin = socket.socket(socket.AF_UNIX); admin.settimeout(5);
            admin.connect("{{ include "keyward.envoyAdminSocket" . }}");
            admin.sendall(b"POST /drain_listeners?graceful HTTP/1.1\r\nHost: envoy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            status = admin.recv(4096).split(b" ")[1:2]; admin.close();
            time.sleep({{ .Values.gateway.drainSeconds | int64 }});
            sys.exit(0 if status == [b"200"] else "Envoy refused to drain")
  resources:
    {{- toYaml .Values.gateway.envoy.resources | nindent 4 }}
  securityContext:
    {{- include "keyward.containerSecurityContext" (dict "root" . "uid" .Values.gateway.envoy.runAsUser) | nindent 4 }}
  volumeMounts:
    - name: envoy-config
      mountPath: {{ include "keyward.envoyConfigDir" . }}
      readOnly: true
    # The whole directory, never a subPath: Kubernetes updates a Secret volume by swapping a symlink
    # in this directory, which Envoy's watched_directory sees (a subPath mount is never updated).
    - name: provider-keys
      mountPath: {{ include "keyward.providerKeysDir" . }}
      readOnly: true
    - name: sockets
      mountPath: {{ include "keyward.socketDir" . }}
    # Envoy writes its audit log here; authz reads, rotates and deletes it.
    - name: outcomes
      mountPath: {{ include "keyward.outcomesDir" . }}
    - name: envoy-admin
      mountPath: {{ include "keyward.envoyAdminDir" . }}
    - name: envoy-tmp
      mountPath: /tmp
{{- end }}

{{- define "keyward.gateway.authzContainer" -}}
- name: authz
  image: {{ include "keyward.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.gateway.authz.nativeSidecar }}
  # A native sidecar: started before Envoy, stopped after it.
  restartPolicy: Always
  {{- end }}
  # umask 007: the socket must be writable by Envoy, which runs as another UID in the same group.
  command: ["/bin/sh", "-c", "umask 007 && exec {{ include "keyward.venv" . }}/bin/python -m authz"]
  env:
    {{- include "keyward.databaseEnv" . | nindent 4 }}
    {{- include "keyward.tokenHashKeyEnv" . | nindent 4 }}
    - name: KEYWARD_AUTHZ_ADDRESS
      value: unix:{{ include "keyward.socketDir" . }}/authz.sock
    # Every decision, and every line of Envoy's audit log, is spooled here before it is shipped to the
    # control plane.
    - name: KEYWARD_AUDIT_SPOOL_DIR
      value: {{ include "keyward.spoolDir" . }}
    # Envoy's audit log (one JSON line per finished request), which authz reads into its spool.
    - name: KEYWARD_ENVOY_AUDIT_LOG
      value: {{ include "keyward.envoyAuditLog" . }}
    # Past this size authz renames the audit log and asks Envoy, on its control socket, to reopen it.
    - name: KEYWARD_ENVOY_AUDIT_LOG_ROTATE_BYTES
      value: {{ .Values.gateway.auditLog.rotateBytes | int64 | quote }}
    - name: KEYWARD_ENVOY_CONTROL
      value: unix:{{ include "keyward.envoyControlSocket" . }}
    # Envoy's ext_authz timeout (gateway.authzTimeout) in seconds: a Check later than this is moot.
    - name: KEYWARD_ENVOY_AUTHZ_TIMEOUT_SECONDS
      value: {{ include "keyward.authzTimeoutSeconds" . | quote }}
    - name: KEYWARD_MAX_STALENESS_SECONDS
      value: {{ .Values.gateway.authz.maxStalenessSeconds | quote }}
    - name: KEYWARD_INGEST_URL
      value: {{ include "keyward.ingestUrl" . }}
    {{- include "keyward.ingestTokenEnv" . | nindent 4 }}
    {{- if .Values.metrics.enabled }}
    # Served on 127.0.0.1 only; Envoy's ops listener proxies it at /authz/metrics.
    - name: KEYWARD_AUTHZ_METRICS_PORT
      value: {{ .Values.metrics.authzPort | int64 | quote }}
    {{- end }}
    {{- include "keyward.otelEnv" . | nindent 4 }}
    # The operator's upstreams (names, kinds, URLs; no key), which authz routes to by name.
    {{- include "keyward.upstreamsEnv" . | nindent 4 }}
    - name: KEYWARD_LOG_LEVEL
      value: {{ .Values.keyward.logLevel | quote }}
  # Started: the gRPC server answers (NOT_SERVING while it loads its token snapshot is an answer).
  startupProbe:
    exec:
      command: [{{ include "keyward.venv" . }}/bin/python, /etc/keyward/probes/authz_health.py, answers,
                envoy.service.auth.v3.Authorization]
    periodSeconds: 2
    timeoutSeconds: 5
    failureThreshold: 30
  # Ready: the token snapshot is loaded and Checks are answered.
  readinessProbe:
    exec:
      command: [{{ include "keyward.venv" . }}/bin/python, /etc/keyward/probes/authz_health.py, serving,
                envoy.service.auth.v3.Authorization]
    periodSeconds: 5
    timeoutSeconds: 5
    failureThreshold: 2
  # Alive: every background task (NOTIFY listener, audit shipper, last-used writer, spool fsync timer) is
  # up and the event loop is not stuck. A process that answers Checks with a dead listener would serve
  # revoked tokens, so a dead task restarts the container.
  livenessProbe:
    exec:
      command: [{{ include "keyward.venv" . }}/bin/python, /etc/keyward/probes/authz_health.py, serving,
                keyward.authz.Background]
    periodSeconds: 15
    timeoutSeconds: 5
    failureThreshold: 4
  {{- if not .Values.gateway.authz.nativeSidecar }}
  lifecycle:
    preStop:
      exec:
        # Outlive Envoy's drain: a draining Envoy still asks authz, and without an answer it fails closed.
        command: ["sleep", {{ add .Values.gateway.preStopSleepSeconds .Values.gateway.drainSeconds 5 | quote }}]
  {{- end }}
  resources:
    {{- toYaml .Values.gateway.authz.resources | nindent 4 }}
  securityContext:
    {{- include "keyward.containerSecurityContext" (dict "root" . "uid" .Values.gateway.authz.runAsUser) | nindent 4 }}
  volumeMounts:
    - name: sockets
      mountPath: {{ include "keyward.socketDir" . }}
    - name: authz-tmp
      mountPath: /tmp
    - name: audit-spool
      mountPath: {{ include "keyward.spoolDir" . }}
    - name: outcomes
      mountPath: {{ include "keyward.outcomesDir" . }}
    - name: probes
      mountPath: /etc/keyward/probes
      readOnly: true
    {{- if .Values.database.caSecret }}
    {{- include "keyward.postgresCaMount" . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
OpenTelemetry for authz and the control plane (otel.endpoint empty: nothing, tracing off). Envoy's own
tracer and its "opentelemetry" cluster are in gateway-configmap.yaml.
*/}}
{{- define "keyward.otelEnv" -}}
{{- if .Values.otel.endpoint }}
- name: KEYWARD_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: KEYWARD_TRACE_SAMPLE_RATIO
  value: {{ .Values.otel.sampleRatio | quote }}
{{- end }}
{{- end }}
