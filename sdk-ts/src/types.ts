// Friendly names for the wire types generated from the runtime's OpenAPI document.
import type { components } from './generated/openapi.js';

type S = components['schemas'];

export type FunctionDefinition = S['FunctionDefinition'];
export type Params = S['Params'];
export type DeployResponse = S['DeployResponse'];
export type FunctionSummary = S['FunctionSummary'];
export type FunctionDetail = S['FunctionDetail'];
export type VersionInfo = S['VersionInfo'];
export type EvaluateRequest = S['EvaluateRequest'];
export type EvaluateResponse = S['EvaluateResponse'];
export type EvaluationCase = S['EvaluationCaseSpec'];
export type CaseScore = S['CaseScore'];
export type InvokeResponse = S['InvokeResponse'];
export type StreamDone = S['StreamDone'];
export type AsyncAccepted = S['AsyncAccepted'];
export type InvocationRecord = S['InvocationRecord'];
export type InvocationPage = S['InvocationPage'];
export type WebhookSpec = S['WebhookSpec'];
export type BatchInfo = S['BatchInfo'];
export type BatchResultLine = S['BatchResultLine'];
export type UsageReport = S['UsageReport'];
export type ModelInfo = S['ModelInfo'];
export type RegisterModel = S['RegisterModel'];
export type RegisterAdapter = S['RegisterAdapter'];
export type AdapterInfo = S['AdapterInfo'];
export type RegistrationInfo = S['RegistrationInfo'];
export type ModelFileInfo = S['ModelFileInfo'];
export type DeviceList = S['DeviceList'];
export type DeviceInfo = S['DeviceInfo'];
export type ApiKeyInfo = S['ApiKeyInfo'];
export type CallerInfo = S['CallerInfo'];
export type CreateApiKey = S['CreateApiKey'];
export type CreatedApiKey = S['CreatedApiKey'];
export type WebhookSecrets = S['WebhookSecrets'];
export type DeliveryInfo = S['DeliveryInfo'];
export type TenantInfo = S['TenantInfo'];
export type CreateTenant = S['CreateTenant'];
export type UpdateTenant = S['UpdateTenant'];
export type CreateTrigger = S['CreateTrigger'];
export type TriggerInfo = S['TriggerInfo'];
export type ErrorBody = S['ErrorBody'];
export type AliasInfo = S['AliasInfo'];
export type AliasChanged = S['AliasChanged'];
export type AliasEvent = S['AliasEvent'];
export type GateSpec = S['GateSpec'];
export type ShadowSpec = S['ShadowSpec'];
export type FunctionStats = S['FunctionStats'];
export type VersionWeight = S['VersionWeight'];
export type VersionScore = S['VersionScore'];

/** Statuses after which an invocation never changes again. */
export type TerminalStatus = 'succeeded' | 'failed' | 'cancelled';
export type InvocationStatus = 'queued' | 'running' | TerminalStatus;
