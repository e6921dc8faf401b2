{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "srs-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Release-qualified name. A release whose name already contains the chart name
is used as is, so `helm install srs-proxy` gives "srs-proxy", not
"srs-proxy-srs-proxy". Truncated to 63 characters (DNS label limit).
*/}}
{{- define "srs-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Names of the other parts; suffixes are short so fullname truncation keeps
them distinct.
*/}}
{{- define "srs-proxy.originName" -}}
{{- printf "%s-origin" (include "srs-proxy.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "srs-proxy.redisName" -}}
{{- printf "%s-redis" (include "srs-proxy.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "srs-proxy.systemServiceName" -}}
{{- printf "%s-system" (include "srs-proxy.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "srs-proxy.udpServiceName" -}}
{{- printf "%s-udp" (include "srs-proxy.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}

{{- define "srs-proxy.originPoolName" -}}
{{- default (include "srs-proxy.originName" .) .Values.discovery.originPool.name }}
{{- end }}

{{- define "srs-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "srs-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
chart label value: name-version.
*/}}
{{- define "srs-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object. Pass a dict: (dict "ctx" $ "component" "proxy").
*/}}
{{- define "srs-proxy.labels" -}}
helm.sh/chart: {{ include "srs-proxy.chart" .ctx }}
{{ include "srs-proxy.selectorLabels" . }}
{{- if .ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: srs-proxy
{{- end }}

{{/*
Selector labels. The component label keeps the proxy, origin and redis
selectors disjoint.
*/}}
{{- define "srs-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "srs-proxy.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Whether the release runs the built-in Redis, and whether the proxy talks to
a Redis at all.
*/}}
{{- define "srs-proxy.usesRedis" -}}
{{- if eq .Values.proxy.store "redis" }}true{{ end }}
{{- end }}

{{- define "srs-proxy.builtinRedis" -}}
{{- if and (eq .Values.proxy.store "redis") (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Refuses value combinations that would deploy something broken.
*/}}
{{- define "srs-proxy.validate" -}}
{{- $p := .Values.proxy }}
{{- if eq $p.store "memory" }}
{{- if or (gt (int $p.replicas) 1) $p.autoscaling.enabled }}
{{- fail "proxy.store=memory keeps state inside one process: set proxy.replicas=1 and proxy.autoscaling.enabled=false, or use proxy.store=redis" }}
{{- end }}
{{- if or .Values.redis.external.url .Values.redis.external.existingSecret }}
{{- fail "redis.external is set but proxy.store=memory: set proxy.store=redis to use it" }}
{{- end }}
{{- end }}
{{- if and .Values.redis.external.url .Values.redis.external.existingSecret }}
{{- fail "set redis.external.url or redis.external.existingSecret, not both" }}
{{- end }}
{{- if lt (int $p.forceQuitTimeoutSeconds) (int $p.graceQuitTimeoutSeconds) }}
{{- fail "proxy.forceQuitTimeoutSeconds must not be shorter than proxy.graceQuitTimeoutSeconds" }}
{{- end }}
{{- if and (not (kindIs "invalid" $p.terminationGracePeriodSeconds)) (lt (int $p.terminationGracePeriodSeconds) (add $p.preStopSleepSeconds $p.forceQuitTimeoutSeconds | int)) }}
{{- fail "proxy.terminationGracePeriodSeconds must be at least proxy.preStopSleepSeconds + proxy.forceQuitTimeoutSeconds, or the kubelet kills the proxy while it still drains" }}
{{- end }}
{{- if and (eq .Values.discovery.mode "originpool") (not .Values.origin.enabled) }}
{{- fail "discovery.mode=originpool points an OriginPool at the chart's origins, but origin.enabled=false: use discovery.mode=off (heartbeats) or create your own OriginPool" }}
{{- end }}
{{- if and (eq .Values.discovery.mode "service") (not .Values.origin.enabled) }}
{{- fail "discovery.mode=service watches the chart's origin Service, but origin.enabled=false" }}
{{- end }}
{{- if and $p.apiAuth.protectMetrics (not $p.apiAuth.enabled) }}
{{- fail "proxy.apiAuth.protectMetrics needs proxy.apiAuth.enabled=true: there is no token to protect /metrics with" }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds of the proxy: long enough for the preStop
sleep and the whole drain, plus a margin for the process to exit.
*/}}
{{- define "srs-proxy.terminationGracePeriodSeconds" -}}
{{- $p := .Values.proxy }}
{{- if kindIs "invalid" $p.terminationGracePeriodSeconds }}
{{- add $p.preStopSleepSeconds $p.forceQuitTimeoutSeconds 5 }}
{{- else }}
{{- $p.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Name and key of the Secret holding the external Redis URL.
*/}}
{{- define "srs-proxy.redisUrlSecretName" -}}
{{- if .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecret }}
{{- else }}
{{- printf "%s-redis-url" (include "srs-proxy.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{- define "srs-proxy.redisUrlSecretKey" -}}
{{- if .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecretKey }}
{{- else }}url{{ end }}
{{- end }}

{{- define "srs-proxy.redisPasswordSecretName" -}}
{{- printf "%s-redis-auth" (include "srs-proxy.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{/*
The proxy image reference.
*/}}
{{- define "srs-proxy.image" -}}
{{- printf "%s:%s" .Values.proxy.image.repository (default .Chart.AppVersion .Values.proxy.image.tag) }}
{{- end }}

{{/*
The Secret holding the system API's bearer token, and its key: the one
the chart creates, or proxy.apiAuth.existingSecret.
*/}}
{{- define "srs-proxy.apiTokenSecretName" -}}
{{- if .Values.proxy.apiAuth.existingSecret }}
{{- .Values.proxy.apiAuth.existingSecret }}
{{- else }}
{{- printf "%s-api-token" (include "srs-proxy.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{- define "srs-proxy.apiTokenSecretKey" -}}
{{- if .Values.proxy.apiAuth.existingSecret }}
{{- .Values.proxy.apiAuth.existingSecretKey }}
{{- else }}
{{- "token" }}
{{- end }}
{{- end }}
